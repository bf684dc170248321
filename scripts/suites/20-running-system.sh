#!/usr/bin/env bash
# Drive a real `bgagent dev` (API + workers) from outside, on each engine in turn (a fresh
# database and broker prefix; a fresh data dir): the seed-parity smoke test and the Python
# helper's tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/dev.sh
for engine in embedded postgres; do
  start_dev suite 2 "$engine"
  export BGAGENT_URL="$DEV_URL"
  export BACKGROUND_AGENT_API_KEY="$DEV_KEY"
  echo "-- tests/integration_test.sh ($engine)"
  bash tests/integration_test.sh
  echo "-- Python helper, clients/python ($engine)"
  BGAGENT_REQUIRE_WORKER=1 bash clients/python/run_tests.sh -q
  stop_dev
done
