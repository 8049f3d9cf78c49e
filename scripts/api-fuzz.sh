#!/usr/bin/env bash
# Schemathesis against a live `nexus serve`: every operation of
# /api/v2/openapi.json, generated and mutated requests, all checks (no 5xx,
# responses as documented). Logout is left out: it would end the run's own
# session; tests/serve.rs covers it. Uploads run without the stateful phase
# (its links inferred from Location headers are wrong) and without the
# negative-data check.
#
# usage: scripts/api-fuzz.sh [NEXUS_BINARY]    (needs PostgreSQL as for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
nexus=${1:-target/debug/nexus}
admin_url=${NEXUS_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}

st=$(command -v schemathesis || true)
if [ -z "$st" ]; then
  venv=target/schemathesis-venv
  if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
      as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    }
    "$venv/bin/pip" install -q schemathesis
  fi
  st="$venv/bin/schemathesis"
fi

db="nexus_fuzz_$$"
work=$(mktemp -d)
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$admin_url" -c "CREATE DATABASE $db"
export DATABASE_URL="${admin_url%/*}/$db"
export NEXUS_JWT_SECRET="fuzz-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export NEXUS_ADMIN_PASSWORD="fuzz-admin-password"
export NEXUS_RATE_LIMIT=1000000 NEXUS_RATE_BURST=1000000 NEXUS_DATA_DIR="$work" RUST_LOG=warn
"$nexus" serve --bind 127.0.0.1:0 2> "$work/stderr" &
pid=$!
for _ in $(seq 1 200); do
  base=$(sed -n 's/^nexus: listening on //p' "$work/stderr")
  [ -n "$base" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/stderr"; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { echo "the server did not start"; cat "$work/stderr"; exit 1; }
token=$(python3 - "$base" <<'PY'
import json, os, sys, urllib.request
body = json.dumps({"username": "admin", "password": os.environ["NEXUS_ADMIN_PASSWORD"]}).encode()
req = urllib.request.Request(sys.argv[1] + "/api/v2/auth/login", body, {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["access_token"])
PY
)
run() { "$st" run "$base/api/v2/openapi.json" -H "Authorization: Bearer $token" --max-examples 40 --workers 2 --seed 1 "$@"; }
run --checks all --exclude-path /api/v2/auth/logout --exclude-operation-id create
# An upload is any bytes: nothing in a body is "schema-violating" for it.
run --checks all --include-operation-id create --exclude-checks negative_data_rejection \
  --phases examples,coverage,fuzzing
