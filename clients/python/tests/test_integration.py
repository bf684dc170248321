"""Integration tests against a real Background Agent API.

Set ``BGAGENT_URL`` and ``BACKGROUND_AGENT_API_KEY`` (``bgagent dev`` prints both). Without them
every test here is skipped. The ``echo`` round trip needs a live worker: it is skipped when
``/health`` reports none, unless ``BGAGENT_REQUIRE_WORKER=1`` makes that a failure.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import pytest

from bgagent_helper import BgAgentError, Client

pytestmark = pytest.mark.integration

URL = os.environ.get("BGAGENT_URL")
KEY = os.environ.get("BACKGROUND_AGENT_API_KEY")


@pytest.fixture
def client() -> Iterator[Client]:
    if not URL or not KEY:
        pytest.skip("integration: set BGAGENT_URL and BACKGROUND_AGENT_API_KEY (see `bgagent dev`)")
    with Client(URL, KEY, timeout=10) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_health(client: Client) -> None:
    health = client.health()
    assert health["status"] == "ok", health
    assert health["db_ok"] is True
    assert health["broker_ok"] is True
    assert set(health) >= {"status", "db_ok", "broker_ok", "paused", "workers"}


def test_register_list_unregister(client: Client) -> None:
    name = unique("pyhelper")
    agent = client.register(name, "http://127.0.0.1:9/run", meta={"owner": "pytest"})
    assert agent["name"] == name
    assert agent["endpoint"] == "http://127.0.0.1:9/run"
    assert agent["meta"] == {"owner": "pytest"}
    assert name in [a["name"] for a in client.list_agents()]

    assert client.unregister(name) == {"name": name, "unregistered": True}
    assert name not in [a["name"] for a in client.list_agents()]
    with pytest.raises(BgAgentError) as info:
        client.unregister(name)
    assert (info.value.status, info.value.code) == (404, "not_found")


def test_enqueue_then_get_and_list(client: Client) -> None:
    # A delayed task: it stays queued whether or not workers run, so get/list/cancel are stable.
    task = client.enqueue(
        "echo", "hello from pytest", meta={"n": 1}, max_attempts=2, timeout_secs=30, delay_secs=3600
    )
    assert uuid.UUID(task["id"])
    assert task["status"] == "queued"
    assert (task["agent"], task["command"], task["meta"]) == ("echo", "hello from pytest", {"n": 1})
    assert (task["max_attempts"], task["timeout_secs"]) == (2, 30)

    got = client.get(task["id"])
    assert got["id"] == task["id"]
    assert got["status"] == "queued"

    listed = client.list(status="queued", agent="echo", limit=500)
    assert task["id"] in [t["id"] for t in listed]

    cancelled = client.cancel(task["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(BgAgentError) as info:
        client.cancel(task["id"])
    assert (info.value.status, info.value.code) == (409, "conflict")


def test_idempotency_key_returns_the_same_task(client: Client) -> None:
    key = unique("idem")
    first = client.enqueue("echo", "once", idempotency_key=key, delay_secs=3600)
    second = client.enqueue("echo", "once", idempotency_key=key, delay_secs=3600)
    assert second["id"] == first["id"]
    assert second["idempotency_key"] == key
    client.cancel(first["id"])


def test_bad_key_is_unauthorized() -> None:
    if not URL:
        pytest.skip("integration: set BGAGENT_URL and BACKGROUND_AGENT_API_KEY (see `bgagent dev`)")
    with Client(URL, "definitely-not-the-key") as bad:
        with pytest.raises(BgAgentError) as info:
            bad.list()
    assert info.value.status == 401
    assert info.value.code == "unauthorized"


def test_unknown_and_malformed_ids(client: Client) -> None:
    with pytest.raises(BgAgentError) as info:
        client.get(str(uuid.uuid4()))
    assert (info.value.status, info.value.code) == (404, "not_found")
    with pytest.raises(BgAgentError) as info:
        client.get("not-a-uuid")
    assert (info.value.status, info.value.code) == (400, "bad_request")


def test_invalid_agent_name_names_the_field(client: Client) -> None:
    with pytest.raises(BgAgentError) as info:
        client.enqueue("Not A Valid Name", "x")
    assert (info.value.status, info.value.code, info.value.field) == (422, "invalid_field", "agent")


def workers_live(client: Client, within: float = 5.0) -> bool:
    """True once /health counts a heart-beating worker (given a few seconds to appear)."""
    deadline = time.monotonic() + within
    while True:
        if client.health().get("workers"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def test_wait_for_echo_task(client: Client) -> None:
    if os.environ.get("BGAGENT_REQUIRE_WORKER") != "1" and not workers_live(client):
        pytest.skip("no live worker reported by /health; set BGAGENT_REQUIRE_WORKER=1 to require one")
    task = client.enqueue("echo", "ping from pytest", meta={"k": "v"})
    done = client.wait(task["id"], timeout=60, poll_interval=0.2)
    assert done["status"] == "succeeded", done
    assert done["result"] is not None
    assert done["finished_at"]
