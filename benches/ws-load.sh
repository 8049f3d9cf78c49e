#!/usr/bin/env bash
# Load check: 500 WebSocket subscribers on a running 1,000,000-row job plus
# 500 connections reading its status (wrk, while the job runs) against a
# release `nexus serve`. Prints every subscriber's outcome, errors, and the
# p50/p95/p99 of the status reads. Needs PostgreSQL as the tests do.
#
# usage: benches/ws-load.sh [SUBSCRIBERS] [READ_SECONDS]
# (status reads: wrk, SUBSCRIBERS connections for READ_SECONDS; PostgreSQL
# from NEXUS_TEST_PG as for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
secs=${2:-5}
command -v wrk >/dev/null || {
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get install -y -qq wrk >/dev/null
}
mkdir -p bench-data
csv=bench-data/customer-1000000.csv
[ -s "$csv" ] || python3 benches/gen-customers.py 1000000 > "$csv"
venv=target/bench-venv
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q httpx websockets; }
cargo build --release --quiet
ulimit -n 8192 || true

. scripts/lib/scratch-server.sh
export NEXUS_JWT_SECRET="load-check-secret-0123456789-0123456789" NEXUS_ADMIN_PASSWORD="load-check-password"
export NEXUS_RATE_LIMIT=1000000000 NEXUS_RATE_BURST=1000000 NEXUS_DB_POOL_MAX=32
scratch_server target/release/nexus nexus_ws_load
"$venv/bin/python" benches/ws-load.py "$base" admin "$NEXUS_ADMIN_PASSWORD" "$csv" "$n" "$secs"
