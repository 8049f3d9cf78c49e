#!/usr/bin/env bash
# Load check: 500 WebSocket subscribers on a running 1,000,000-row job plus
# 500 concurrent status requests (repeated while the job runs) against a
# release `nexus serve`. Prints every subscriber's outcome, errors, and the
# p50/p95/p99 of the status reads. Needs PostgreSQL as the tests do.
#
# usage: benches/ws-load.sh [SUBSCRIBERS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
admin_url=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PGOPTIONS="-c client_min_messages=warning"
mkdir -p bench-data
csv=bench-data/customer-1000000.csv
[ -s "$csv" ] || python3 benches/gen-customers.py 1000000 > "$csv"
venv=target/bench-venv
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q httpx websockets; }
cargo build --release --quiet
ulimit -n 8192 || true

db=nexus_ws_load
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
work=$(mktemp -d)
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export DATABASE_URL="${admin_url%/*}/$db" NEXUS_DATA_DIR="$work" RUST_LOG=warn
export NEXUS_JWT_SECRET="load-check-secret-0123456789-0123456789" NEXUS_ADMIN_PASSWORD="load-check-password"
export NEXUS_RATE_LIMIT=1000000000 NEXUS_RATE_BURST=1000000 NEXUS_DB_POOL_MAX=32
target/release/nexus serve --bind 127.0.0.1:0 2> "$work/stderr" &
pid=$!
for _ in $(seq 1 200); do
  base=$(sed -n "s/^nexus: listening on //p" "$work/stderr"); [ -n "$base" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/stderr"; exit 1; }; sleep 0.1
done
[ -n "${base:-}" ] || { echo "the server did not start"; cat "$work/stderr"; exit 1; }
"$venv/bin/python" benches/ws-load.py "$base" admin "$NEXUS_ADMIN_PASSWORD" "$csv" "$n"
