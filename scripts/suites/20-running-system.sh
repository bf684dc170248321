#!/usr/bin/env bash
# Drive a real `bgagent dev` (API + workers, fresh database and broker prefix) from outside:
# the seed-parity smoke test and the Python helper's tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CARGO_TARGET_DIR:=$HOME/.cache/bgagent/target}"
cargo build --quiet --bin bgagent
bin="$CARGO_TARGET_DIR/debug/bgagent"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
suffix="$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"
port="$(free_port)"
key="suite-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
log="$(mktemp)"
base_db="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

export BGAGENT_URL="http://127.0.0.1:$port"
export BACKGROUND_AGENT_API_KEY="$key"

DATABASE_URL="${base_db%/*}/bgagent_suite_$suffix" \
BGAGENT_BROKER_PREFIX="suite-$suffix" \
BGAGENT_BIND="127.0.0.1:$port" \
BGAGENT_METRICS_BIND=off \
BGAGENT_LOG_FORMAT=json RUST_LOG=warn \
  "$bin" dev --ephemeral --workers 2 >"$log" 2>&1 &
dev_pid=$!
stop_dev() {
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -f "$log"
}
trap stop_dev EXIT

for _ in $(seq 1 120); do
  curl -fsS -o /dev/null "$BGAGENT_URL/health" 2>/dev/null && break
  kill -0 "$dev_pid" 2>/dev/null || { echo "bgagent dev exited:"; cat "$log"; exit 1; }
  sleep 0.5
done

echo "-- tests/integration_test.sh"
bash tests/integration_test.sh
echo "-- Python helper (clients/python)"
BGAGENT_REQUIRE_WORKER=1 bash clients/python/run_tests.sh -q
