"""Schemathesis hooks for the fuzz suite (scripts/suites/30-fuzz.sh).

Three rules of the API cannot be written in JSON Schema, so generated requests are adjusted to
respect them instead of being reported as "valid data refused":

- A task's or agent's `meta` may hold any JSON number a 64-bit float can hold (every one reads
  back equal); an integer literal beyond that range (hundreds of digits, which Python generates
  freely) is refused. JSON Schema cannot bound numbers nested at any depth, so such integers are
  brought into range. Floats are left alone: the fuzzer sends the extremes on purpose.
- The `Idempotency-Key` header and the body's `idempotency_key` must agree when both are sent
  (422 otherwise); a schema cannot relate a header to a body field, so a disagreeing header is
  dropped.
- An agent's `endpoint` must pass the egress policy, which refuses the unspecified, link-local
  and metadata addresses in every spelling (`0`, `0x0`, `000…0` are all 0.0.0.0). A schema
  cannot tell a host name from a numeric address spelling, so an endpoint whose host is all
  digits, dots or hex is given a host the policy allows (refusals are tested in
  tests/integration/egress.rs).
"""

import re
from urllib.parse import urlsplit, urlunsplit

import schemathesis

# Integers beyond this are out of a double's range.
MAX_INTEGER = 10**300
HEADER_KEY = re.compile(r"^[!-~]([ -~]*[!-~])?$")
NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9.]+)$", re.IGNORECASE)


def _allowed_endpoint(endpoint):
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
    except ValueError:
        return endpoint
    if not NUMERIC_HOST.match(host):
        return endpoint
    netloc = "agent.example.com" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _bounded(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(-MAX_INTEGER, min(MAX_INTEGER, value))
    if isinstance(value, list):
        return [_bounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    return value


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        body = dict(body, meta=_bounded(body["meta"]))
    return body


@schemathesis.hook
def map_case(context, case):
    # Here rather than in map_body: the coverage phase's cases do not pass through map_body.
    if isinstance(case.body, dict) and isinstance(case.body.get("endpoint"), str):
        case.body = dict(case.body, endpoint=_allowed_endpoint(case.body["endpoint"]))
    headers = case.headers or {}
    name = next((h for h in headers if h.lower() == "idempotency-key"), None)
    body = case.body if isinstance(case.body, dict) else {}
    key = body.get("idempotency_key")
    # Only a valid header that merely disagrees with the body is dropped: a deliberately invalid
    # one (a negative test case) stays.
    if (
        name is not None
        and isinstance(key, str)
        and isinstance(headers[name], str)
        and HEADER_KEY.match(headers[name])
        and headers[name] != key
    ):
        case.headers = {h: v for h, v in headers.items() if h != name}
    # A valid `wait_secs` holds the request until the task is final, up to a minute: keep such
    # waits to a second so the run checks answers, not patience. Invalid values stay.
    query = case.query if isinstance(case.query, dict) else None
    if query is not None:
        wait = query.get("wait_secs")
        if isinstance(wait, (int, str)) and str(wait).isdigit() and int(wait) <= 60:
            case.query = dict(query, wait_secs=min(int(wait), 1))
    return case
