#!/usr/bin/env bash
# Make sure the local PostgreSQL and RabbitMQ answer, starting them when they are installed but
# stopped. With DATABASE_URL / AMQP_URL pointing elsewhere, those servers are the caller's to run.
# Where neither can be started here but a Docker engine answers, the Rust integration tests start
# both with testcontainers (tests/integration/common.rs), so that is not an error.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 2; i++)); do
    port_open "$2" "$3" && return 0
    sleep 0.5
  done
  echo "services: $1 did not come up on $2:$3 within $4 s" >&2
  return 1
}

ensure_postgres() {
  if [[ -n "${DATABASE_URL:-}" && "$DATABASE_URL" != *"127.0.0.1:5432"* && "$DATABASE_URL" != *"localhost:5432"* ]]; then
    return 0
  fi
  port_open 127.0.0.1 5432 && return 0
  echo "services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  else
    echo "services: PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is not installed" >&2
    return 1
  fi
  wait_for PostgreSQL 127.0.0.1 5432 60
}

ensure_rabbitmq() {
  if [[ -n "${AMQP_URL:-}" && "$AMQP_URL" != *"127.0.0.1:5672"* && "$AMQP_URL" != *"localhost:5672"* ]]; then
    return 0
  fi
  port_open 127.0.0.1 5672 && return 0
  echo "services: starting RabbitMQ"
  if command -v rabbitmq-server >/dev/null; then
    rabbitmq-server -detached
  else
    echo "services: RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed" >&2
    return 1
  fi
  wait_for RabbitMQ 127.0.0.1 5672 120
}

# Bound the local broker's dead-letter queues like the deployments do (docs/OPERATIONS.md, "Dead
# letters"): a policy, so it applies to the queues as they are. Only where rabbitmqctl reaches the
# local broker; the tests set their own policies.
bound_dead_letters() {
  if [[ -n "${AMQP_URL:-}" && "$AMQP_URL" != *"127.0.0.1:5672"* && "$AMQP_URL" != *"localhost:5672"* ]]; then
    return 0
  fi
  command -v rabbitmqctl >/dev/null || return 0
  local prefix="${BGAGENT_BROKER_PREFIX:-bgagent}"
  rabbitmqctl -q set_policy --apply-to queues --priority 10 "$prefix-dead-letters" \
    "^$prefix[.]dead([.]events)?\$" \
    '{"max-length":100000,"message-ttl":1209600000,"overflow":"drop-head"}' >/dev/null 2>&1 ||
    echo "services: could not set the dead-letter policy (rabbitmqctl set_policy); continuing" >&2
}

docker_engine() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

if ensure_postgres && ensure_rabbitmq; then
  bound_dead_letters
  echo "services: PostgreSQL and RabbitMQ are up"
elif docker_engine; then
  echo "services: not available locally; the integration tests start them with testcontainers"
else
  exit 1
fi
