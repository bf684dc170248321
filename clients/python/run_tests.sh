#!/usr/bin/env bash
# Install bgagent-helper with its test extra into a virtualenv and run pytest.
#
#   clients/python/run_tests.sh [pytest args...]
#
# The venv is created in a temporary directory (removed on exit), or $BGAGENT_PY_VENV is used
# (created if missing, kept). PYTHON picks the interpreter (default python3). Integration tests
# run when BGAGENT_URL and BACKGROUND_AGENT_API_KEY are set, and are skipped otherwise.
# Exits with pytest's code; "no tests collected" (5) counts as a failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

if [[ -n "${BGAGENT_PY_VENV:-}" ]]; then
    venv="$BGAGENT_PY_VENV"
else
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/bgagent-py.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    venv="$tmp/venv"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here[test]"

cd "$here"
set +e
# The venv's pytest (not `python -m pytest`, which would put the source tree first on sys.path)
# so the tests exercise the installed package.
"$venv/bin/pytest" "$@"
code=$?
set -e
if [[ $code -eq 5 ]]; then
    echo "run_tests.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit $code
