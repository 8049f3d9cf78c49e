# Sourced by the side-by-side scripts in benches/: strict mode, quiet psql,
# the repository as working directory, and the settings they share —
# ROWS (the first argument, default 1,000,000), ROUNDS (default 3), the
# PostgreSQL server to make the bench database on (BENCH_ADMIN_URL) and the
# folder for generated files.
set -euo pipefail
export PGOPTIONS="-c client_min_messages=warning"
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${ROUNDS:-3}
admin_url=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
data=bench-data
mkdir -p "$data"
