#!/usr/bin/env bash
# Schema-driven fuzzing: Schemathesis generates requests from the API's own /openapi.json (valid
# and invalid ones, with and without the key, and chains of calls linked by ids) against a real
# `bgagent dev` (API + a worker, fresh database and broker prefix). It fails on any 5xx, any
# answer the document does not describe (status, content type, headers, body schema), data the
# document allows but the server refuses or the reverse, and on any ERROR the server logs.
# A fixed seed keeps the run repeatable; about a minute on 2 cores, cut off after
# BGAGENT_FUZZ_TIMEOUT seconds.
#
#   BGAGENT_FUZZ_EXAMPLES   test cases per operation and phase (default 100)
#   BGAGENT_FUZZ_SEED       Hypothesis seed (default 20261130)
#   BGAGENT_FUZZ_TIMEOUT    longest the Schemathesis run may take, in seconds (default 300)
#   BGAGENT_FUZZ_SANITIZE   false shows keys and values in failure reports (default true)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
: "${CARGO_TARGET_DIR:=$HOME/.cache/bgagent/target}"
export CARGO_TARGET_DIR

# Schemathesis pinned in a virtualenv of its own, created on first use.
schemathesis_version="4.32.5"
venv="${BGAGENT_FUZZ_VENV:-$HOME/.cache/bgagent/venv-fuzz}"
if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *"version $schemathesis_version" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

cargo build --quiet --bin bgagent
bin="$CARGO_TARGET_DIR/debug/bgagent"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
suffix="$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"
port="$(free_port)"
key="fuzz-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
work="$(mktemp -d)"
log="$work/dev.log"
base_db="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
url="http://127.0.0.1:$port"

DATABASE_URL="${base_db%/*}/bgagent_fuzz_$suffix" \
BGAGENT_BROKER_PREFIX="fuzz-$suffix" \
BACKGROUND_AGENT_API_KEY="$key" \
BGAGENT_BIND="127.0.0.1:$port" \
BGAGENT_METRICS_BIND=off \
BGAGENT_LOG_FORMAT=json RUST_LOG=warn \
  "$bin" dev --ephemeral --workers 1 >"$log" 2>&1 &
dev_pid=$!
stop_dev() {
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap stop_dev EXIT

for _ in $(seq 1 120); do
  curl -fsS -o /dev/null "$url/health" 2>/dev/null && break
  kill -0 "$dev_pid" 2>/dev/null || { echo "bgagent dev exited:"; cat "$log"; exit 1; }
  sleep 0.5
done
curl -fsS -H "x-api-key: $key" -o "$work/openapi.json" "$url/openapi.json"

# The API refuses NUL (U+0000) in any string with 422. Top-level fields say so with a pattern, so
# the coverage phase sends NUL there as invalid data; nested `meta` values cannot say it in JSON
# Schema, so no generated string holds NUL otherwise (--generation-allow-x00 false).
status=0
# Run inside the scratch directory: Schemathesis and Hypothesis keep state in the working directory.
# The hooks adjust generated requests to the two rules JSON Schema cannot state (see the file).
(cd "$work" && SCHEMATHESIS_HOOKS="$repo/scripts/fuzz/hooks.py" \
timeout --signal=INT --kill-after=10 "${BGAGENT_FUZZ_TIMEOUT:-300}" \
"$venv/bin/schemathesis" --config-file "$repo/scripts/fuzz/schemathesis.toml" run openapi.json \
  --url "$url" \
  --header "x-api-key: $key" \
  --checks all \
  --exclude-checks object_level_authorization \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${BGAGENT_FUZZ_EXAMPLES:-100}" \
  --seed "${BGAGENT_FUZZ_SEED:-20261130}" \
  --generation-allow-x00 false \
  --generation-database none \
  --request-timeout 10 \
  --workers 2 \
  --no-color --output-sanitize "${BGAGENT_FUZZ_SANITIZE:-true}") || status=$?

if ! kill -0 "$dev_pid" 2>/dev/null; then
  echo "bgagent dev died during the fuzz run:"; cat "$log"; exit 1
fi
if grep -q '"level":"ERROR"' "$log"; then
  echo "server errors logged during the fuzz run:"; grep '"level":"ERROR"' "$log" | head -20
  status=1
fi
exit "$status"
