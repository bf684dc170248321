# Sourced by the suites that drive a running system: start a throwaway `bgagent dev` (API and
# workers, a generated key) on either engine and stop it when the suite exits (or on stop_dev).
#
#   start_dev NAME WORKERS [ENGINE]   ENGINE is `postgres` (default: a fresh database and broker
#                            prefix on the local or DATABASE_URL / AMQP_URL servers) or `embedded`
#                            (a fresh data dir, no servers); sets DEV_URL, DEV_KEY, DEV_PID,
#                            DEV_LOG (its JSON log), DEV_WORK (a scratch directory removed with
#                            it); returns once /health answers

start_dev() {
  local name="$1" workers="$2" engine="${3:-postgres}"
  : "${CARGO_TARGET_DIR:=$HOME/.cache/bgagent/target}"
  export CARGO_TARGET_DIR
  cargo build --quiet --bin bgagent
  local bin="$CARGO_TARGET_DIR/debug/bgagent"
  local suffix port base_db
  suffix="$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  base_db="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  DEV_KEY="$name-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  DEV_URL="http://127.0.0.1:$port"
  DEV_WORK="$(mktemp -d)"
  DEV_LOG="$DEV_WORK/dev.log"
  local -a storage
  if [[ "$engine" == embedded ]]; then
    storage=(-u DATABASE_URL -u AMQP_URL "BGAGENT_DATA_DIR=$DEV_WORK/data")
  else
    storage=("DATABASE_URL=${base_db%/*}/bgagent_${name}_$suffix"
      "AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
      "BGAGENT_BROKER_PREFIX=$name-$suffix")
  fi
  env "${storage[@]}" \
  BACKGROUND_AGENT_API_KEY="$DEV_KEY" \
  BGAGENT_BIND="127.0.0.1:$port" \
  BGAGENT_METRICS_BIND=off \
  BGAGENT_LOG_FORMAT=json RUST_LOG=warn \
    "$bin" dev --ephemeral --workers "$workers" >"$DEV_LOG" 2>&1 &
  DEV_PID=$!
  trap stop_dev EXIT
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$DEV_URL/health" 2>/dev/null && return 0
    kill -0 "$DEV_PID" 2>/dev/null || { echo "bgagent dev exited:"; cat "$DEV_LOG"; return 1; }
    sleep 0.5
  done
  echo "bgagent dev did not answer /health within 60 s:"; cat "$DEV_LOG"
  return 1
}

stop_dev() {
  [[ -n "${DEV_PID:-}" ]] || return 0
  kill -TERM "$DEV_PID" 2>/dev/null || true
  wait "$DEV_PID" 2>/dev/null || true
  rm -rf "$DEV_WORK"
  DEV_PID=""
}
