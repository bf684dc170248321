"""The dashboard at /ui, driven in headless Chromium against a running deployment: sign-in, live
updates, task actions, pause and resume, CSRF, sign-out, and the screenshots in docs/."""

import os
import uuid

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC

from conftest import sign_in, wait_for


def text_of(driver, css):
    """The text of the first element matching `css`, read in one step: live updates replace
    elements, so a found element can be gone before its text is read."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
        css,
    )


def click(driver, css):
    """Click the element matching `css`. Live updates may replace it between finding and clicking
    (as a person's click would land on the new one), so a stale element is looked up again."""

    def clicked(d):
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
            return True
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait_for(driver, clicked, f"could not click {css}")


def mark_page(driver):
    """Tag the loaded document, so a later check can tell it was updated in place, not reloaded."""
    driver.execute_script("window.bgagentPageMark = 'still here';")


def page_was_not_reloaded(driver):
    return driver.execute_script("return window.bgagentPageMark;") == "still here"


def post_status(driver, path, body=""):
    """POST a form body from the page with its own cookies (no CSRF field) and return the status."""
    return driver.execute_async_script(
        """
        const [path, body, done] = arguments;
        fetch(path, {method: 'POST', body: body,
                     headers: {'content-type': 'application/x-www-form-urlencoded'}})
          .then(r => done(r.status), e => done(String(e)));
        """,
        path,
        body,
    )


def test_ui_without_a_session_redirects_to_sign_in(browser, base_url):
    browser.get(base_url + "/ui/tasks")
    wait_for(browser, EC.presence_of_element_located((By.ID, "login")), "no sign-in form")
    assert browser.current_url.endswith("/ui/login"), browser.current_url


def test_a_wrong_key_is_refused_with_a_message(browser, base_url):
    browser.get(base_url + "/ui/login")
    field = wait_for(browser, EC.element_to_be_clickable((By.ID, "api_key")), "no api_key field")
    field.send_keys("not-the-key" + Keys.ENTER)
    alert = wait_for(
        browser, EC.visibility_of_element_located((By.CSS_SELECTOR, "[role=alert]")), "no alert"
    )
    assert alert.text.strip()
    assert "not-the-key" not in browser.page_source
    assert browser.find_elements(By.ID, "login")
    assert not browser.find_elements(By.ID, "fleet-state")


def test_sign_in_by_keyboard_and_the_key_never_shows(browser, base_url, api_key):
    browser.get(base_url + "/ui/login")
    field = wait_for(browser, EC.element_to_be_clickable((By.ID, "api_key")), "no api_key field")
    label = browser.find_element(By.CSS_SELECTOR, "label[for=api_key]")
    assert label.text.strip()
    field.send_keys(api_key + Keys.ENTER)
    wait_for(browser, EC.presence_of_element_located((By.ID, "fleet-state")), "not signed in")
    assert api_key not in browser.current_url
    for page in ("/ui", "/ui/tasks", "/ui/failed", "/ui/agents", "/ui/workers"):
        browser.get(base_url + page)
        wait_for(browser, EC.presence_of_element_located((By.TAG_NAME, "nav")), page)
        assert api_key not in browser.page_source, page
    cookie_names = {cookie["name"]: cookie for cookie in browser.get_cookies()}
    assert cookie_names, "no session cookie"
    for cookie in cookie_names.values():
        assert cookie["httpOnly"], cookie["name"]
        assert cookie.get("sameSite") == "Strict", cookie
        assert api_key not in cookie["value"]


def test_an_enqueued_task_appears_without_reload_and_opens(signed_in, base_url, api):
    driver = signed_in
    driver.get(base_url + "/ui/tasks")
    wait_for(driver, EC.presence_of_element_located((By.ID, "tasks")), "no tasks table")
    mark_page(driver)
    task = api.enqueue("echo", "appears live " + uuid.uuid4().hex)
    row_css = f'#tasks tr[data-task-id="{task["id"]}"]'
    wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, row_css)), "row not live")
    wait_for(
        driver,
        lambda d: text_of(d, row_css + " .status") == "succeeded",
        "row status did not turn succeeded",
    )
    assert page_was_not_reloaded(driver)
    click(driver, row_css + " a")
    wait_for(driver, EC.url_contains(f"/ui/tasks/{task['id']}"), "task page not opened")
    wait_for(driver, lambda d: text_of(d, "#task-status") == "succeeded", "task status")
    assert task["command"] in driver.page_source


def test_cancel_a_running_task(signed_in, base_url, api):
    driver = signed_in
    task = api.enqueue("sleep", "long sleep", meta={"ms": 120000})
    driver.get(f"{base_url}/ui/tasks/{task['id']}")
    mark_page(driver)
    # The page follows the task live: queued, then running once a worker claims it.
    wait_for(driver, lambda d: text_of(d, "#task-status") == "running", "never shown running")
    assert page_was_not_reloaded(driver)
    click(driver, "#cancel button")
    wait_for(driver, lambda d: text_of(d, "#task-status") == "cancelled", "not cancelled")
    assert api.wait_final(task["id"])["status"] == "cancelled"


def test_retry_a_failed_task(signed_in, base_url, api):
    driver = signed_in
    task = api.enqueue("fail", "fails once", meta={"retryable": False}, max_attempts=1)
    assert api.wait_final(task["id"])["status"] == "failed"
    driver.get(base_url + "/ui/failed")
    row_css = f'#tasks tr[data-task-id="{task["id"]}"]'
    wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, row_css)), "not listed")
    driver.get(f"{base_url}/ui/tasks/{task['id']}")
    wait_for(driver, lambda d: text_of(d, "#task-status") == "failed", "not shown failed")
    click(driver, "#retry button")
    # `fail` fails again: the retry is the task's second attempt, under the same id.
    wait_for(driver, lambda d: api.task(task["id"])["attempts"] == 2, "retry did not run")
    assert api.wait_final(task["id"])["status"] == "failed"
    driver.get(f"{base_url}/ui/tasks/{task['id']}")
    wait_for(driver, lambda d: text_of(d, "#task-status") == "failed", "not shown failed again")
    attempts = driver.find_element(By.ID, "attempts").text
    assert "1" in attempts and "2" in attempts, attempts


def test_pause_and_resume(signed_in, base_url, api):
    driver = signed_in
    try:
        driver.get(base_url + "/ui")
        wait_for(driver, lambda d: text_of(d, "#fleet-state") == "running", "not running")
        click(driver, "#pause button")
        wait_for(driver, lambda d: text_of(d, "#fleet-state") == "paused", "not shown paused")
        assert api.paused()
        click(driver, "#resume button")
        wait_for(driver, lambda d: text_of(d, "#fleet-state") == "running", "not resumed")
        assert not api.paused()
    finally:
        api.call("POST", "/start")


def test_a_post_without_the_csrf_token_is_refused(signed_in, base_url, api):
    driver = signed_in
    driver.get(base_url + "/ui")
    wait_for(driver, EC.presence_of_element_located((By.ID, "pause")), "no pause form")
    assert post_status(driver, "/ui/stop") == 403
    assert post_status(driver, "/ui/stop", "csrf=forged") == 403
    # The same form with its token removed, submitted by the browser itself (in one step, so the
    # overview's refresh cannot put the token back in between).
    driver.execute_script(
        """
        const form = document.getElementById('pause');
        form.querySelectorAll('input[name=csrf]').forEach(e => e.remove());
        form.requestSubmit();
        """
    )
    wait_for(driver, lambda d: not d.find_elements(By.ID, "pause") or "403" in d.title
             or "403" in d.page_source, "no refusal page")
    assert not api.paused()


def test_sign_out_ends_the_session(signed_in, base_url):
    driver = signed_in
    click(driver, "#logout button")
    wait_for(driver, EC.presence_of_element_located((By.ID, "login")), "not signed out")
    driver.get(base_url + "/ui")
    wait_for(driver, EC.presence_of_element_located((By.ID, "login")), "session still valid")


def test_reads_on_a_phone(signed_in, base_url, api):
    driver = signed_in
    driver.set_window_size(390, 844)
    for page in ("/ui", "/ui/tasks", "/ui/failed", "/ui/agents", "/ui/workers"):
        driver.get(base_url + page)
        wait_for(driver, EC.presence_of_element_located((By.TAG_NAME, "nav")), page)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth;"
        )
        assert overflow <= 0, f"{page} scrolls sideways by {overflow}px on a phone"


@pytest.mark.skipif(not os.environ.get("BGAGENT_SCREENSHOTS"), reason="BGAGENT_SCREENSHOTS unset")
def test_screenshots(browser, base_url, api_key, api):
    """Refresh the screenshots in docs/ (scripts/screenshots sets BGAGENT_SCREENSHOTS)."""
    out = os.environ["BGAGENT_SCREENSHOTS"]
    os.makedirs(out, exist_ok=True)
    browser.get(base_url + "/ui/login")
    wait_for(browser, EC.presence_of_element_located((By.ID, "login")), "login")
    browser.save_screenshot(os.path.join(out, "login.png"))
    sign_in(browser, base_url, api_key)
    done = api.enqueue("echo", "summarise the weekly report", meta={"week": 48})
    failed = api.enqueue("fail", "call a flaky endpoint", meta={"retryable": False}, max_attempts=1)
    api.enqueue("sleep", "long-running research", meta={"ms": 30000})
    api.wait_final(done["id"])
    api.wait_final(failed["id"])
    pages = [
        ("overview", "/ui", "fleet-state"),
        ("tasks", "/ui/tasks", "tasks"),
        ("task", f"/ui/tasks/{done['id']}", "task-status"),
        ("failed", "/ui/failed", "tasks"),
        ("agents", "/ui/agents", "agents"),
        ("workers", "/ui/workers", "workers"),
    ]
    for name, path, marker in pages:
        browser.get(base_url + path)
        wait_for(browser, EC.presence_of_element_located((By.ID, marker)), name)
        browser.save_screenshot(os.path.join(out, f"{name}.png"))
    browser.set_window_size(390, 844)
    browser.get(base_url + "/ui/tasks")
    wait_for(browser, EC.presence_of_element_located((By.ID, "tasks")), "phone")
    browser.save_screenshot(os.path.join(out, "tasks-phone.png"))
