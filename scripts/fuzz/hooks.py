"""Schemathesis hooks for the fuzz suite (scripts/suites/30-fuzz.sh).

Two rules of the API cannot be written in JSON Schema, so generated requests are adjusted to
respect them instead of being reported as "valid data refused":

- A task's or agent's `meta` may hold any JSON number a 64-bit float can hold (every one reads
  back equal); an integer literal beyond that range (hundreds of digits, which Python generates
  freely) is refused. JSON Schema cannot bound numbers nested at any depth, so such integers are
  brought into range. Floats are left alone: the fuzzer sends the extremes on purpose.
- The `Idempotency-Key` header and the body's `idempotency_key` must agree when both are sent
  (422 otherwise); a schema cannot relate a header to a body field, so a disagreeing header is
  dropped.
"""

import re

import schemathesis

# Integers beyond this are out of a double's range.
MAX_INTEGER = 10**300
HEADER_KEY = re.compile(r"^[!-~]([ -~]*[!-~])?$")


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
    return case
