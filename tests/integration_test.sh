#!/usr/bin/env bash
# Smoke test of a running Background Agent deployment (compose, Kubernetes or `bgagent dev`),
# the same checks as the original service's integration test:
# health, enqueue, completion, /processed, stop and start.
#
#   BACKGROUND_AGENT_API_KEY=... BGAGENT_URL=http://127.0.0.1:8080 bash tests/integration_test.sh
#
# Needs curl and python3 (for JSON). Workers must be running: the task is run by the built-in
# `echo` executor. Exits non-zero when a step fails; the fleet is resumed (POST /start) even then.
set -euo pipefail

BASE_URL="${BGAGENT_URL:-http://127.0.0.1:8080}"
BASE_URL="${BASE_URL%/}"
API_KEY="${BACKGROUND_AGENT_API_KEY:-}"
WAIT_SECS="${BGAGENT_TEST_WAIT_SECS:-30}"

if [[ -z "$API_KEY" ]]; then
  echo "error: BACKGROUND_AGENT_API_KEY is not set (the API key of the deployment under test)" >&2
  exit 2
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required" >&2; exit 2; }
done

PASSED=0
FAILED=0
STATUS=""
BODY=""
BODY_FILE="$(mktemp)"
PAUSED_BY_US=0

cleanup() {
  # Never leave the fleet paused because a step between /stop and /start failed.
  if [[ "$PAUSED_BY_US" -eq 1 ]]; then
    curl -sS -o /dev/null --max-time 10 -X POST -H "x-api-key: $API_KEY" "$BASE_URL/start" || true
  fi
  rm -f "$BODY_FILE"
}
trap cleanup EXIT

pass() {
  PASSED=$((PASSED + 1))
  echo "PASS $*"
}

failed() {
  FAILED=$((FAILED + 1))
  echo "FAIL $*"
  if [[ -n "$BODY" ]]; then
    echo "     status $STATUS, body: ${BODY:0:500}"
  fi
}

# request METHOD PATH [JSON_BODY] [auth|noauth]: sets STATUS and BODY.
request() {
  local method="$1" path="$2" data="${3:-}" auth="${4:-auth}"
  local args=(-sS -o "$BODY_FILE" -w '%{http_code}' --max-time 10 -X "$method"
    -H 'accept: application/json')
  if [[ "$auth" == "auth" ]]; then
    args+=(-H "x-api-key: $API_KEY")
  fi
  if [[ -n "$data" ]]; then
    args+=(-H 'content-type: application/json' --data "$data")
  fi
  if ! STATUS="$(curl "${args[@]}" "$BASE_URL$path")"; then
    STATUS="000"
  fi
  BODY="$(cat "$BODY_FILE")"
}

# json EXPR: evaluate a Python expression on the parsed BODY (bound to `d`, the environment to
# `env`); prints the result (JSON for objects, plain text for strings), fails when the body is not
# JSON.
json() {
  BODY="$BODY" TASK_ID="${TASK_ID:-}" python3 -c '
import json, os, sys
d = json.loads(os.environ["BODY"])
v = eval(sys.argv[1], {"d": d, "env": os.environ})
print(v if isinstance(v, str) else json.dumps(v))
' "$1"
}

echo "Background Agent smoke test against $BASE_URL"

# 1. Health.
echo "-- GET /health"
request GET /health "" noauth
if [[ "$STATUS" == "200" ]] && status_field="$(json 'd["status"]' 2>/dev/null)"; then
  pass "GET /health -> 200, status=$status_field"
else
  failed "GET /health must answer 200 with a JSON status field"
fi

# 2. Authentication is enforced.
echo "-- GET /tasks without x-api-key"
request GET /tasks "" noauth
if [[ "$STATUS" == "401" ]]; then
  pass "GET /tasks without a key -> 401"
else
  failed "GET /tasks without a key must answer 401"
fi

# 3. Enqueue.
echo "-- POST /enqueue"
TASK_ID=""
request POST /enqueue '{"agent":"echo","command":"hello","meta":{"n":1}}'
if [[ "$STATUS" == "202" ]] && TASK_ID="$(json 'd["id"]' 2>/dev/null)" && [[ -n "$TASK_ID" ]]; then
  pass "POST /enqueue -> 202, id=$TASK_ID"
else
  TASK_ID=""
  failed "POST /enqueue must answer 202 with an id"
fi

# 4. Completion: the echo executor finishes the task.
if [[ -n "$TASK_ID" ]]; then
  echo "-- GET /tasks/$TASK_ID until succeeded (up to ${WAIT_SECS}s)"
  deadline=$((SECONDS + WAIT_SECS))
  task_status=""
  while ((SECONDS < deadline)); do
    request GET "/tasks/$TASK_ID"
    if [[ "$STATUS" == "200" ]]; then
      task_status="$(json 'd["status"]' 2>/dev/null || true)"
      case "$task_status" in
        succeeded | failed | cancelled) break ;;
      esac
    fi
    sleep 0.5
  done
  if [[ "$task_status" == "succeeded" ]]; then
    pass "task $TASK_ID succeeded"
    if [[ "$(json 'd.get("result")' 2>/dev/null || true)" == *hello* ]]; then
      pass "the echo result carries the command"
    else
      failed "the result of an echo task must carry its input (\"hello\")"
    fi
  else
    failed "task $TASK_ID did not succeed within ${WAIT_SECS}s (last status: ${task_status:-none})"
  fi

  # 5. The attempt shows up in /processed.
  echo "-- GET /processed"
  request GET /processed
  if [[ "$STATUS" == "200" ]] &&
    [[ "$(json 'any(p.get("task_id") == env["TASK_ID"] for p in d["processed"])' 2>/dev/null)" == "true" ]]; then
    pass "GET /processed lists task $TASK_ID"
  else
    failed "GET /processed must list task $TASK_ID"
  fi
else
  BODY=""
  failed "completion not checked: no task was enqueued"
  failed "/processed not checked: no task was enqueued"
fi

# 6. Stop and start the fleet.
echo "-- POST /stop"
request POST /stop
if [[ "$STATUS" == "200" ]] && [[ "$(json 'd["paused"]' 2>/dev/null)" == "true" ]]; then
  PAUSED_BY_US=1
  pass "POST /stop -> paused=true"
else
  PAUSED_BY_US=1
  failed "POST /stop must answer 200 with paused=true"
fi

echo "-- POST /start"
request POST /start
if [[ "$STATUS" == "200" ]] && [[ "$(json 'd["paused"]' 2>/dev/null)" == "false" ]]; then
  PAUSED_BY_US=0
  pass "POST /start -> paused=false"
else
  failed "POST /start must answer 200 with paused=false"
fi

echo "$PASSED passed, $FAILED failed"
[[ "$FAILED" -eq 0 ]]
