#!/usr/bin/env bash
# Drive a real `bgagent dev` (API + workers, fresh database and broker prefix) from outside:
# the seed-parity smoke test and the Python helper's tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/dev.sh
start_dev suite 2
export BGAGENT_URL="$DEV_URL"
export BACKGROUND_AGENT_API_KEY="$DEV_KEY"

echo "-- tests/integration_test.sh"
bash tests/integration_test.sh
echo "-- Python helper (clients/python)"
BGAGENT_REQUIRE_WORKER=1 bash clients/python/run_tests.sh -q
