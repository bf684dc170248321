"""Fixtures of the dashboard's browser tests: a headless Chromium (Debian's chromium and
chromedriver, driven by Selenium) against a running Background Agent at BGAGENT_URL, signed in
with BACKGROUND_AGENT_API_KEY; and a small REST client for the same deployment."""

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

# Every wait in these tests ends in a failure after this long: long enough for a loaded 2-core
# machine, short enough that a broken live update fails the run instead of hanging it.
WAIT_SECS = float(os.environ.get("BGAGENT_BROWSER_WAIT_SECS", "20"))


class Api:
    """The REST API of the deployment under test (x-api-key)."""

    def __init__(self, base_url, key):
        self.base_url = base_url.rstrip("/")
        self.key = key

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("x-api-key", self.key)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def enqueue(self, agent, command="browser test", meta=None, **fields):
        body = {"agent": agent, "command": command, **fields}
        if meta is not None:
            body["meta"] = meta
        status, task = self.call("POST", "/enqueue", body)
        assert status in (200, 201, 202), (status, task)
        return task

    def task(self, task_id):
        status, task = self.call("GET", f"/tasks/{task_id}")
        assert status == 200, (status, task)
        return task

    def wait_final(self, task_id, secs=30):
        status, task = self.call("GET", f"/tasks/{task_id}?wait_secs={secs}")
        assert status == 200, (status, task)
        return task

    def paused(self):
        with urllib.request.urlopen(self.base_url + "/health", timeout=10) as response:
            return json.loads(response.read())["paused"]


@pytest.fixture(scope="session")
def base_url():
    url = os.environ.get("BGAGENT_URL")
    if not url:
        pytest.skip("BGAGENT_URL is not set")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def api_key():
    key = os.environ.get("BACKGROUND_AGENT_API_KEY")
    if not key:
        pytest.skip("BACKGROUND_AGENT_API_KEY is not set")
    return key


@pytest.fixture(scope="session")
def api(base_url, api_key):
    return Api(base_url, api_key)


@pytest.fixture()
def browser():
    """A fresh headless Chromium with its own empty profile (no cookies carried between tests)."""
    profile = tempfile.mkdtemp(prefix="bgagent-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        # Without these Chromium keeps calling Google's hosts, which a closed network refuses.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, message):
    """Wait until `condition(driver)` is truthy; fail the test with `message` after WAIT_SECS."""
    return WebDriverWait(driver, WAIT_SECS, poll_frequency=0.1).until(condition, message)


def sign_in(driver, base_url, key):
    driver.get(base_url + "/ui/login")
    field = wait_for(driver, EC.element_to_be_clickable((By.ID, "api_key")), "no api_key field")
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(driver, EC.presence_of_element_located((By.ID, "fleet-state")), "overview not shown")
    assert driver.current_url.rstrip("/").endswith("/ui"), driver.current_url


@pytest.fixture()
def signed_in(browser, base_url, api_key):
    sign_in(browser, base_url, api_key)
    return browser
