#!/usr/bin/env bash
# Run the whole suite against real services. Called by `make test` after setup.sh test.
source "$(dirname "$0")/lib.sh"
cd "$GPUHUB_ROOT"
# Lint first (seconds): a layer violation or unformatted file fails the suite before any service starts.
step "lint: import layers, ruff check, ruff format --check (make lint)"
make --no-print-directory lint \
  || die "lint failed (above): \`make fmt\` applies ruff's formatting and safe fixes; the rest need a hand edit"
step "starting PostgreSQL for the tests"
GPUHUB_TEST_PG_URL="$(bash scripts/postgres.sh | tail -n 1)"
export GPUHUB_TEST_PG_URL
note "$GPUHUB_TEST_PG_URL"
# Leftovers of an interrupted earlier run (test hubs label everything gpuhubtest*).
docker ps -a --filter label=gpuhub.managed=1 --format '{{.ID}} {{.Label "gpuhub.hub"}}' \
  | awk '$2 ~ /^gpuhubtest/ {print $1}' | xargs -r docker rm -f >/dev/null
step "running the test suite"
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's 5 means no test ran: a failure for us.
if [ "$rc" -eq 5 ]; then die "pytest collected no tests"; fi
exit "$rc"
