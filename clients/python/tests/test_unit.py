"""Unit tests: a fake API through httpx.MockTransport, a fake Omni Gateway on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Tuple
from uuid import UUID

import httpx
import pytest

from bgagent_helper import (
    BgAgentConnectionError,
    BgAgentError,
    Client,
    WaitTimeout,
)

BASE = "http://bgagent.test"
KEY = "test-key"
TASK_ID = "01980000-0000-7000-8000-000000000001"


def task(status: str = "queued", **extra: Any) -> Dict[str, Any]:
    body = {"id": TASK_ID, "agent": "echo", "command": "hi", "meta": {}, "status": status}
    body.update(extra)
    return body


def make_client(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> Tuple[Client, List[httpx.Request]]:
    seen: List[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    kwargs.setdefault("backoff", 0.001)
    client = Client(BASE, KEY, transport=httpx.MockTransport(record), **kwargs)
    return client, seen


def error(status: int, code: str, message: str, field: Any = None) -> httpx.Response:
    body: Dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return httpx.Response(status, json={"error": body})


# -- requests ------------------------------------------------------------------------------


def test_enqueue_sends_key_and_only_given_fields() -> None:
    client, seen = make_client(lambda r: httpx.Response(202, json=task()))
    with client:
        got = client.enqueue("echo", "hi", meta={"a": 1}, max_attempts=3)
    assert got["id"] == TASK_ID
    (req,) = seen
    assert req.method == "POST"
    assert str(req.url) == f"{BASE}/enqueue"
    assert req.headers["x-api-key"] == KEY
    body = json.loads(req.content)
    # A fresh idempotency key on every enqueue, so retries never create a second task.
    assert UUID(body.pop("idempotency_key"))
    assert body == {
        "agent": "echo",
        "command": "hi",
        "meta": {"a": 1},
        "max_attempts": 3,
    }


def test_enqueue_all_options() -> None:
    client, seen = make_client(lambda r: httpx.Response(202, json=task()))
    client.enqueue(
        "echo", "hi", idempotency_key="k1", max_attempts=2, timeout_secs=30, delay_secs=5
    )
    assert json.loads(seen[0].content) == {
        "agent": "echo",
        "command": "hi",
        "idempotency_key": "k1",
        "max_attempts": 2,
        "timeout_secs": 30,
        "delay_secs": 5,
    }


def test_agents_calls() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path == "/agents/register":
            return httpx.Response(200, json={**json.loads(r.content), "meta": {}})
        if r.url.path == "/agents/unregister":
            return httpx.Response(200, json={"name": "a1", "unregistered": True})
        return httpx.Response(200, json={"agents": [{"name": "a1"}]})

    client, seen = make_client(handler)
    assert client.register("a1", "http://127.0.0.1:9/run")["name"] == "a1"
    assert json.loads(seen[0].content) == {"name": "a1", "endpoint": "http://127.0.0.1:9/run"}
    client.register("a1", "http://127.0.0.1:9/run", meta={"team": "x"})
    assert json.loads(seen[1].content)["meta"] == {"team": "x"}
    assert client.list_agents() == [{"name": "a1"}]
    assert client.unregister("a1") == {"name": "a1", "unregistered": True}
    assert [r.url.path for r in seen] == [
        "/agents/register",
        "/agents/register",
        "/agents",
        "/agents/unregister",
    ]


def test_list_passes_filters_and_iter_follows_cursor() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.params.get("cursor") == "c1":
            return httpx.Response(200, json={"tasks": [task(id="t2")]})
        return httpx.Response(200, json={"tasks": [task(id="t1")], "next_cursor": "c1"})

    client, seen = make_client(handler)
    assert client.list(status="queued", agent="echo", limit=1)[0]["id"] == "t1"
    assert dict(seen[0].url.params) == {"status": "queued", "agent": "echo", "limit": "1"}
    assert [t["id"] for t in client.iter_tasks(page_size=1)] == ["t1", "t2"]
    assert "full" not in seen[1].url.params, "summaries by default"
    client.list(full=True)
    assert seen[-1].url.params.get("full") == "true"


def test_task_id_is_a_single_path_segment() -> None:
    client, seen = make_client(lambda r: httpx.Response(200, json=task()))
    client.get("../agents")
    assert seen[0].url.raw_path == b"/tasks/..%2Fagents"
    client.cancel(TASK_ID)
    assert seen[1].url.path == f"/tasks/{TASK_ID}/cancel"
    assert seen[1].method == "POST"


def test_retry_and_retry_all() -> None:
    client, seen = make_client(lambda r: httpx.Response(200, json=task()))
    client.retry(TASK_ID)
    assert seen[0].url.path == f"/tasks/{TASK_ID}/retry"
    assert seen[0].method == "POST"

    client, seen = make_client(lambda r: httpx.Response(200, json={"retried": 2, "more": False}))
    assert client.retry_all() == {"retried": 2, "more": False}
    assert seen[0].url.path == "/tasks/retry"
    assert json.loads(seen[0].content) == {"status": "failed"}
    client.retry_all("cancelled", agent="echo", finished_after="2026-12-07T00:00:00Z", limit=5)
    assert json.loads(seen[1].content) == {
        "status": "cancelled",
        "agent": "echo",
        "finished_after": "2026-12-07T00:00:00Z",
        "limit": 5,
    }


def test_retry_is_not_repeated_on_503() -> None:
    client, seen = make_client(lambda r: error(503, "unavailable", "database unavailable"))
    with pytest.raises(BgAgentError):
        client.retry(TASK_ID)
    assert len(seen) == 1


def test_health_sends_no_key() -> None:
    client, seen = make_client(
        lambda r: httpx.Response(
            200,
            json={"status": "ok", "db_ok": True, "broker_ok": True, "paused": False, "workers": 1},
        )
    )
    assert client.health()["status"] == "ok"
    assert "x-api-key" not in seen[0].headers


def test_defaults_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGAGENT_URL", "http://env.test:1234/")
    monkeypatch.setenv("BACKGROUND_AGENT_API_KEY", "env-key")
    seen: List[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, json=task())

    with Client(transport=httpx.MockTransport(handler)) as client:
        assert client.base_url == "http://env.test:1234"
        client.get(TASK_ID)
    assert str(seen[0].url) == f"http://env.test:1234/tasks/{TASK_ID}"
    assert seen[0].headers["x-api-key"] == "env-key"


def test_api_key_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("BACKGROUND_AGENT_API_KEY", raising=False)
    secret = tmp_path / "key"
    secret.write_text("file-key\n")
    monkeypatch.setenv("BACKGROUND_AGENT_API_KEY_FILE", str(secret))
    seen: List[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, json=task())

    Client(BASE, transport=httpx.MockTransport(handler)).get(TASK_ID)
    assert seen[0].headers["x-api-key"] == "file-key"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, status, code",
    [
        (error(401, "unauthorized", "missing or invalid x-api-key"), 401, "unauthorized"),
        (error(404, "not_found", "no task x"), 404, "not_found"),
        (error(400, "bad_request", "bad id"), 400, "bad_request"),
        (error(409, "conflict", "task already succeeded"), 409, "conflict"),
        (error(413, "payload_too_large", "too big"), 413, "payload_too_large"),
        (httpx.Response(502, text="<html>bad gateway</html>"), 502, "http_502"),
        (httpx.Response(404), 404, "http_404"),
    ],
)
def test_error_mapping(response: httpx.Response, status: int, code: str) -> None:
    client, _ = make_client(lambda r: response)
    with pytest.raises(BgAgentError) as info:
        client.cancel(TASK_ID)
    assert info.value.status == status
    assert info.value.code == code
    assert info.value.message
    assert code in str(info.value)


def test_invalid_field_error_names_the_field() -> None:
    client, _ = make_client(
        lambda r: error(422, "invalid_field", "agent: must match ...", field="agent")
    )
    with pytest.raises(BgAgentError) as info:
        client.enqueue("Bad Name", "x")
    assert (info.value.status, info.value.code, info.value.field) == (422, "invalid_field", "agent")


# -- retries --------------------------------------------------------------------------------


def flaky(failures: List[httpx.Response], final: httpx.Response) -> Callable[..., httpx.Response]:
    queue = list(failures)

    def handler(r: httpx.Request) -> httpx.Response:
        return queue.pop(0) if queue else final

    return handler


def test_get_retries_503_then_succeeds() -> None:
    unavailable = error(503, "unavailable", "database unavailable, retry later")
    client, seen = make_client(flaky([unavailable, unavailable], httpx.Response(200, json=task())))
    assert client.get(TASK_ID)["id"] == TASK_ID
    assert len(seen) == 3


def test_get_gives_up_after_retries() -> None:
    client, seen = make_client(lambda r: error(503, "unavailable", "down"), retries=2)
    with pytest.raises(BgAgentError) as info:
        client.get(TASK_ID)
    assert (info.value.status, info.value.code) == (503, "unavailable")
    assert len(seen) == 3


def test_enqueue_without_key_retries_with_one_generated_key() -> None:
    unknown = error(503, "outcome_unknown", "the task may or may not have been stored")
    timeout = error(408, "timeout", "request took too long")
    client, seen = make_client(flaky([unknown, timeout], httpx.Response(202, json=task())))
    assert client.enqueue("echo", "hi")["id"] == TASK_ID
    keys = {json.loads(r.content)["idempotency_key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1


def test_enqueue_with_key_is_retried_on_503() -> None:
    unavailable = error(503, "unavailable", "down")
    client, seen = make_client(flaky([unavailable], httpx.Response(202, json=task())))
    assert client.enqueue("echo", "hi", idempotency_key="k")["id"] == TASK_ID
    assert len(seen) == 2


def raising(exc: Exception, times: int, final: httpx.Response) -> Callable[..., httpx.Response]:
    count = {"n": 0}

    def handler(r: httpx.Request) -> httpx.Response:
        count["n"] += 1
        if count["n"] <= times:
            raise exc
        return final

    return handler


def test_connect_errors_are_retried_even_for_enqueue() -> None:
    client, seen = make_client(
        raising(httpx.ConnectError("refused"), 2, httpx.Response(202, json=task()))
    )
    assert client.enqueue("echo", "hi")["id"] == TASK_ID
    assert len(seen) == 3


def test_read_errors_retry_only_idempotent_calls() -> None:
    client, seen = make_client(raising(httpx.ReadError("reset"), 1, httpx.Response(200, json=task())))
    assert client.get(TASK_ID)["id"] == TASK_ID
    assert len(seen) == 2

    client, seen = make_client(raising(httpx.ReadError("reset"), 1, httpx.Response(200, json=task())))
    with pytest.raises(BgAgentConnectionError) as info:
        client.cancel(TASK_ID)
    assert info.value.status is None
    assert info.value.code == "connection_error"
    assert len(seen) == 1


def test_server_down_raises_connection_error() -> None:
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    with Client("http://127.0.0.1:9", KEY, timeout=2, retries=1, backoff=0.001) as client:
        with pytest.raises(BgAgentConnectionError) as info:
            client.get(TASK_ID)
    assert isinstance(info.value, BgAgentError)
    assert info.value.status is None


# -- wait -----------------------------------------------------------------------------------


def test_wait_polls_until_terminal() -> None:
    client, seen = make_client(
        flaky(
            [httpx.Response(200, json=task("queued")), httpx.Response(200, json=task("running"))],
            httpx.Response(200, json=task("succeeded", result={"echo": "hi"})),
        )
    )
    done = client.wait(TASK_ID, timeout=5, poll_interval=0.01)
    assert done["status"] == "succeeded"
    assert done["result"] == {"echo": "hi"}
    assert len(seen) == 3


def test_wait_asks_the_server_to_wait() -> None:
    client, seen = make_client(lambda r: httpx.Response(200, json=task("succeeded")), timeout=3)
    client.wait(TASK_ID, timeout=45.5)
    (req,) = seen
    assert req.url.path == f"/tasks/{TASK_ID}"
    # At most 20 s a call, within the time left; the request's own limit covers the wait.
    assert req.url.params["wait_secs"] == "20"
    assert req.extensions["timeout"]["read"] == 23
    client.wait(TASK_ID, timeout=4.9)
    assert seen[1].url.params["wait_secs"] == "4"


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_wait_returns_failed_and_cancelled(status: str) -> None:
    client, _ = make_client(lambda r: httpx.Response(200, json=task(status)))
    assert client.wait(TASK_ID, timeout=1)["status"] == status


def test_wait_times_out() -> None:
    client, seen = make_client(lambda r: httpx.Response(200, json=task("running")))
    with pytest.raises(TimeoutError) as info:
        client.wait(TASK_ID, timeout=0.1, poll_interval=0.02)
    err = info.value
    assert isinstance(err, WaitTimeout)
    assert isinstance(err, BgAgentError)
    assert err.code == "wait_timeout"
    assert err.task_id == TASK_ID
    assert err.task["status"] == "running"
    assert len(seen) >= 2


def test_wait_raises_api_errors() -> None:
    client, _ = make_client(lambda r: error(404, "not_found", "no task"))
    with pytest.raises(BgAgentError) as info:
        client.wait(TASK_ID, timeout=1)
    assert info.value.code == "not_found"


# -- Omni Gateway (a real HTTP server on 127.0.0.1) -----------------------------------------


class FakeGateway:
    """Records requests; answers like the gateway, or with the status set in ``reply``."""

    def __init__(self) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.reply: Tuple[int, Any] = (200, {"task_id": "gw-123"})
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                gateway.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)}
                )
                status, body = gateway.reply
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def header(self, i: int, name: str) -> Any:
        lowered = {k.lower(): v for k, v in self.requests[i]["headers"].items()}
        return lowered.get(name.lower())


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway()
    gw.thread.start()
    try:
        yield gw
    finally:
        gw.server.shutdown()
        gw.server.server_close()


def test_gateway_path_header_and_body(gateway: FakeGateway) -> None:
    with Client("http://127.0.0.1:9", "bgagent-secret") as client:
        answer = client.enqueue_via_gateway(
            "researcher",
            "summarise the report",
            meta={"doc": 7},
            gateway_url=gateway.url + "/",
            gateway_api_key="gw-key",
        )
    assert answer == {"task_id": "gw-123"}
    (req,) = gateway.requests
    assert req["path"] == "/api/agents/enqueue"
    assert gateway.header(0, "X-API-KEY") == "gw-key"
    assert req["body"] == {
        "role": "researcher",
        "objective": "summarise the report",
        "context": {"doc": 7},
    }
    # Only the gateway key is sent: x-api-key is the same header name, case-insensitively.
    assert "bgagent-secret" not in json.dumps(req["headers"])


def test_gateway_defaults_from_env(gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("OMNI_GATEWAY_API_KEY", "env-gw-key")
    with Client("http://127.0.0.1:9", "k") as client:
        client.enqueue_via_gateway("coder", "fix it")
    assert gateway.requests[0]["path"] == "/api/agents/enqueue"
    assert gateway.header(0, "X-API-KEY") == "env-gw-key"
    assert gateway.requests[0]["body"] == {"role": "coder", "objective": "fix it", "context": {}}


def test_gateway_error_status(gateway: FakeGateway) -> None:
    gateway.reply = (403, {"detail": "bad key"})
    with Client("http://127.0.0.1:9", "k") as client:
        with pytest.raises(BgAgentError) as info:
            client.enqueue_via_gateway("coder", "x", gateway_url=gateway.url, gateway_api_key="no")
    assert info.value.status == 403
    assert info.value.code == "http_403"
    assert "bad key" in info.value.message


def test_gateway_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_GATEWAY_URL", raising=False)
    with Client("http://127.0.0.1:9", "k") as client:
        with pytest.raises(ValueError, match="OMNI_GATEWAY_URL"):
            client.enqueue_via_gateway("coder", "x")


def test_non_object_answer_is_an_error() -> None:
    client, _ = make_client(lambda r: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(BgAgentError) as info:
        client.get(TASK_ID)
    assert (info.value.status, info.value.code) == (200, "bad_response")
