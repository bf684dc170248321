"""Python helper for agents that use Background Agent.

A thin, typed wrapper over the HTTP API::

    from bgagent_helper import Client

    with Client() as bg:                      # BGAGENT_URL, BACKGROUND_AGENT_API_KEY
        task = bg.enqueue("echo", "hello", meta={"n": 1})
        done = bg.wait(task["id"], timeout=30)
        print(done["status"], done["result"])

Every API error raises :class:`BgAgentError` with the HTTP ``status`` and the API's error
``code`` and ``message``. Tasks and agents are returned as the API's JSON, as plain dicts.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx

__all__ = [
    "BgAgentError",
    "BgAgentConnectionError",
    "WaitTimeout",
    "Client",
    "TERMINAL_STATUSES",
    "DEFAULT_URL",
    "GATEWAY_ENQUEUE_PATH",
]

__version__ = "0.1.0"

#: Statuses after which a task never changes again.
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Longest single ``wait_secs`` of :meth:`Client.wait`: inside the API's default 30 s request
# timeout (the API also ends a wait 1 s before its own request timeout).
MAX_WAIT_PER_CALL = 20

#: Base URL used when neither ``base_url`` nor ``BGAGENT_URL`` is given.
DEFAULT_URL = "http://127.0.0.1:8080"

#: Path of the Omni Gateway's enqueue endpoint, appended to the gateway URL.
GATEWAY_ENQUEUE_PATH = "/api/agents/enqueue"

Task = Dict[str, Any]
"""A task as the API returns it (``id``, ``agent``, ``command``, ``status``, ``result``, ...)."""

TaskId = Union[str, UUID]


class BgAgentError(Exception):
    """An error answer from the API (or the gateway), or no answer at all.

    Attributes:
        status: HTTP status code, or ``None`` when no response was received.
        code: The API's machine-readable error code (``"unauthorized"``, ``"not_found"``,
            ``"invalid_field"``, ``"conflict"``, ``"unavailable"``, ...), or ``"http_<status>"``
            when the body was not the API's error JSON.
        message: Human-readable explanation.
        field: The offending field, for ``invalid_field`` (422) errors.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: str = "error",
        field: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class BgAgentConnectionError(BgAgentError):
    """The server could not be reached (after retries, for idempotent calls)."""


class WaitTimeout(BgAgentError, TimeoutError):
    """:meth:`Client.wait` gave up before the task finished.

    Attributes:
        task_id: The task waited for.
        task: The task as last seen (still not finished).
    """

    def __init__(self, task_id: str, task: Task, timeout: float) -> None:
        super().__init__(
            f"task {task_id} still {task.get('status')!r} after {timeout:g}s",
            code="wait_timeout",
        )
        self.task_id = task_id
        self.task = task


def _env_api_key() -> Optional[str]:
    key = os.environ.get("BACKGROUND_AGENT_API_KEY")
    if key:
        return key
    path = os.environ.get("BACKGROUND_AGENT_API_KEY_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    return None


def _error_from_response(response: httpx.Response) -> BgAgentError:
    """Build a :class:`BgAgentError` from a non-2xx response."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return BgAgentError(
            str(err.get("message") or response.reason_phrase),
            status=status,
            code=str(err.get("code") or f"http_{status}"),
            field=err.get("field"),
        )
    text = response.text.strip()[:500] or response.reason_phrase or "no body"
    return BgAgentError(text, status=status, code=f"http_{status}")


class Client:
    """Synchronous client for the Background Agent HTTP API.

    Args:
        base_url: API base URL; defaults to ``$BGAGENT_URL``, then ``http://127.0.0.1:8080``.
        api_key: Sent as ``x-api-key``; defaults to ``$BACKGROUND_AGENT_API_KEY`` (or the
            contents of ``$BACKGROUND_AGENT_API_KEY_FILE``). Only :meth:`health` works without.
        timeout: Per-request timeout in seconds.
        retries: Extra attempts for idempotent calls on connection errors and 408/503 answers.
        backoff: First retry delay in seconds; doubles each time (with jitter).
        transport: Optional ``httpx`` transport (for tests, e.g. ``httpx.MockTransport``).

    Idempotent calls (``GET``s, :meth:`register`, which is an upsert, and :meth:`enqueue`, which
    always sends an idempotency key) are retried on connection errors, 408 and 503. Other calls
    are retried only when the connection could not be opened at all, since then nothing reached
    the server.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 10.0,
        *,
        retries: int = 3,
        backoff: float = 0.2,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("BGAGENT_URL") or DEFAULT_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else _env_api_key()
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        # The API key is added per request, never as a client default, so that it is not sent
        # to the Omni Gateway, which this same connection pool also talks to.
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"user-agent": f"bgagent-helper/{__version__}"},
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        idempotent: bool,
        auth: bool = True,
        url: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> httpx.Response:
        """Send one call with retries; return the 2xx response or raise BgAgentError."""
        hdrs: Dict[str, str] = dict(headers or {})
        if auth and self._api_key is not None:
            hdrs["x-api-key"] = self._api_key
        target = url if url is not None else self.base_url + path
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    target,
                    json=json,
                    params=clean_params or None,
                    headers=hdrs,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: safe to retry any call.
                if attempt < self.retries:
                    attempt += 1
                    self._sleep_backoff(attempt, None)
                    continue
                raise BgAgentConnectionError(
                    f"cannot connect to {target}: {exc}", code="connection_error"
                ) from exc
            except httpx.TransportError as exc:
                # The request may have reached the server: retry only idempotent calls.
                if idempotent and attempt < self.retries:
                    attempt += 1
                    self._sleep_backoff(attempt, None)
                    continue
                raise BgAgentConnectionError(
                    f"{method} {target} failed: {exc!r}", code="connection_error"
                ) from exc
            # 503 (unavailable, or outcome unknown) and 408 may hide a stored request: retry only
            # calls that are safe to repeat (enqueue always carries an idempotency key).
            if response.status_code in (408, 503) and idempotent and attempt < self.retries:
                attempt += 1
                self._sleep_backoff(attempt, response.headers.get("retry-after"))
                continue
            if response.status_code >= 400:
                raise _error_from_response(response)
            return response

    def _sleep_backoff(self, attempt: int, retry_after: Optional[str]) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 5.0))
            except ValueError:
                pass
        time.sleep(delay)

    def _call(self, method: str, path: str, **kwargs: Any) -> Dict[str, Any]:
        """:meth:`_request` for API calls, whose answers are JSON objects."""
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BgAgentError(
                f"{method} {path}: expected a JSON object, got {response.text[:200]!r}",
                status=response.status_code,
                code="bad_response",
            )
        return body

    @staticmethod
    def _task_path(task_id: TaskId) -> str:
        return "/tasks/" + quote(str(task_id), safe="")

    # -- agents ------------------------------------------------------------------------------

    def register(
        self, name: str, endpoint: str, meta: Optional[Mapping[str, Any]] = None
    ) -> Dict[str, Any]:
        """Register (or update) agent ``name``; workers will POST its tasks to ``endpoint``.

        Returns the agent: ``{name, endpoint, meta, created_at, updated_at}``.
        """
        body: Dict[str, Any] = {"name": name, "endpoint": endpoint}
        if meta is not None:
            body["meta"] = dict(meta)
        return self._call("POST", "/agents/register", json=body, idempotent=True)

    def unregister(self, name: str) -> Dict[str, Any]:
        """Remove agent ``name``. Returns ``{name, unregistered: True}``; 404 if unknown."""
        return self._call(
            "POST", "/agents/unregister", json={"name": name}, idempotent=False
        )

    def list_agents(self) -> List[Dict[str, Any]]:
        """All registered agents."""
        agents: List[Dict[str, Any]] = self._call("GET", "/agents", idempotent=True)["agents"]
        return agents

    # -- tasks -------------------------------------------------------------------------------

    def enqueue(
        self,
        agent: str,
        command: str,
        meta: Optional[Mapping[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        max_attempts: Optional[int] = None,
        timeout_secs: Optional[int] = None,
        delay_secs: Optional[int] = None,
    ) -> Task:
        """Enqueue ``command`` for ``agent`` and return the stored task (with its ``id``).

        With an ``idempotency_key``, enqueueing again returns the task that already holds that
        key instead of creating a new one. Without one, a fresh key is sent, so the call is
        retried on transient failures without ever creating the task twice.
        """
        if idempotency_key is None:
            idempotency_key = str(uuid4())
        body: Dict[str, Any] = {"agent": agent, "command": command}
        optional = {
            "meta": dict(meta) if meta is not None else None,
            "idempotency_key": idempotency_key,
            "max_attempts": max_attempts,
            "timeout_secs": timeout_secs,
            "delay_secs": delay_secs,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._call("POST", "/enqueue", json=body, idempotent=True)

    def get(self, task_id: TaskId) -> Task:
        """The task ``task_id`` (404 ``not_found`` if unknown, 400 if not a UUID)."""
        return self._call("GET", self._task_path(task_id), idempotent=True)

    def list(
        self,
        status: Optional[str] = None,
        agent: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        full: bool = False,
    ) -> List[Task]:
        """One page of tasks, newest first, optionally filtered by ``status`` and ``agent``.

        ``limit`` is 1-500 (server default 50). Use :meth:`iter_tasks` to walk every page.
        The tasks are summaries without ``meta`` and ``result`` unless ``full`` is true
        (:meth:`get` returns one task in full).
        """
        page = self.list_page(status=status, agent=agent, limit=limit, cursor=cursor, full=full)
        tasks: List[Task] = page["tasks"]
        return tasks

    def list_page(
        self,
        status: Optional[str] = None,
        agent: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        full: bool = False,
    ) -> Dict[str, Any]:
        """One page as the API returns it: ``{"tasks": [...], "next_cursor"?: str}``; with
        ``full`` each task also has ``meta`` and ``result``."""
        params = {
            "status": status,
            "agent": agent,
            "limit": limit,
            "cursor": cursor,
            "full": "true" if full else None,
        }
        return self._call("GET", "/tasks", params=params, idempotent=True)

    def iter_tasks(
        self,
        status: Optional[str] = None,
        agent: Optional[str] = None,
        page_size: Optional[int] = None,
        full: bool = False,
    ) -> Iterator[Task]:
        """Every matching task, newest first, following ``next_cursor`` page by page
        (summaries unless ``full``)."""
        cursor: Optional[str] = None
        while True:
            page = self.list_page(
                status=status, agent=agent, limit=page_size, cursor=cursor, full=full
            )
            yield from page["tasks"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, task_id: TaskId) -> Task:
        """Cancel a task: a queued one at once, a running one through its worker.

        Returns the task (``status`` ``cancelled``, or ``cancel_requested`` true while it runs).
        Raises :class:`BgAgentError` ``conflict`` (409) when it had already finished.
        """
        return self._call(
            "POST", self._task_path(task_id) + "/cancel", idempotent=False
        )

    def retry(self, task_id: TaskId) -> Task:
        """Queue a failed or cancelled task again under its id, with a fresh attempt budget.

        Its attempt numbers keep counting; earlier attempts stay in ``/processed``. Returns the
        task (``status`` ``queued``). Raises :class:`BgAgentError` ``conflict`` (409) when it is
        queued, running or succeeded.
        """
        return self._call("POST", self._task_path(task_id) + "/retry", idempotent=False)

    def retry_all(
        self,
        status: str = "failed",
        agent: Optional[str] = None,
        finished_after: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Queue again the ``failed`` (or ``cancelled``) tasks that match, oldest finished first.

        ``finished_after`` is an RFC 3339 time; ``limit`` is 1 to 100,000 (the API's default is
        10,000). Returns ``{"retried": n, "more": bool}``; ``more`` is true when the limit was
        reached (call again).
        """
        body: Dict[str, Any] = {"status": status}
        if agent is not None:
            body["agent"] = agent
        if finished_after is not None:
            body["finished_after"] = finished_after
        if limit is not None:
            body["limit"] = limit
        return self._call("POST", "/tasks/retry", json=body, idempotent=False)

    def wait(
        self, task_id: TaskId, timeout: float = 60.0, poll_interval: float = 0.5
    ) -> Task:
        """Wait until the task is ``succeeded``, ``failed`` or ``cancelled``; return it.

        Each call is a long wait (``GET /tasks/{id}?wait_secs=N``, N at most 20 and within the
        time left) that the server answers as soon as the task is final, so nothing polls; the
        request's time limit is N plus the client's ``timeout``. Should the server answer early
        with the task unfinished (the last fraction of a second, or a server without
        ``wait_secs``), the next call comes after ``poll_interval`` seconds.

        Raises :class:`WaitTimeout` (a :class:`TimeoutError`) if it has not finished within
        ``timeout`` seconds. A failed or cancelled task is returned, not raised: check
        ``task["status"]``.
        """
        deadline = time.monotonic() + timeout
        while True:
            # Whole seconds that end before the deadline, so the answer carries the latest state.
            wait_secs = max(0, min(int(deadline - time.monotonic()), MAX_WAIT_PER_CALL))
            asked = time.monotonic()
            task = self._call(
                "GET",
                self._task_path(task_id),
                params={"wait_secs": wait_secs},
                idempotent=True,
                timeout=wait_secs + self.timeout,
            )
            if task.get("status") in TERMINAL_STATUSES:
                return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(str(task_id), task, timeout)
            if wait_secs == 0 or time.monotonic() - asked < wait_secs / 2:
                time.sleep(min(poll_interval, remaining))

    # -- operations --------------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """``{status, db_ok, broker_ok, paused, workers}``; needs no API key."""
        return self._call("GET", "/health", idempotent=True, auth=False)

    # -- Omni Gateway ------------------------------------------------------------------------

    def enqueue_via_gateway(
        self,
        agent: str,
        command: str,
        meta: Optional[Mapping[str, Any]] = None,
        gateway_url: Optional[str] = None,
        gateway_api_key: Optional[str] = None,
    ) -> Any:
        """Hand a task straight to the Omni Gateway, bypassing Background Agent.

        Sends ``POST {gateway_url}/api/agents/enqueue`` with header ``X-API-KEY`` and body
        ``{"role": agent, "objective": command, "context": meta}`` and returns the gateway's
        JSON answer (its task id). ``gateway_url`` and ``gateway_api_key`` default to
        ``$OMNI_GATEWAY_URL`` and ``$OMNI_GATEWAY_API_KEY``. The Background Agent API key is
        never sent to the gateway.

        Raises:
            ValueError: no gateway URL is configured.
            BgAgentError: the gateway answered with an error status or could not be reached.
        """
        url = gateway_url or os.environ.get("OMNI_GATEWAY_URL")
        if not url:
            raise ValueError("no Omni Gateway URL: pass gateway_url or set OMNI_GATEWAY_URL")
        key = (
            gateway_api_key
            if gateway_api_key is not None
            else os.environ.get("OMNI_GATEWAY_API_KEY")
        )
        headers = {"X-API-KEY": key} if key else {}
        body = {
            "role": agent,
            "objective": command,
            "context": dict(meta) if meta is not None else {},
        }
        response = self._request(
            "POST",
            GATEWAY_ENQUEUE_PATH,
            url=url.rstrip("/") + GATEWAY_ENQUEUE_PATH,
            json=body,
            headers=headers,
            idempotent=False,
            auth=False,
        )
        try:
            return response.json()
        except ValueError:
            return response.text
