#!/usr/bin/env bash
# Schemathesis against a live `nexus serve`: every operation of
# /api/v2/openapi.json, generated and mutated requests, all checks (no 5xx,
# responses as documented). Logout is left out: it would end the run's own
# session; tests/serve.rs covers it. Uploads run without the stateful phase
# (its links inferred from Location headers are wrong), without the
# negative-data check, and without the positive-data check: an upload's
# options are valid only together (the delimiter is not the quote, a model
# to upsert has a key), which the document cannot say; tests/jobs_http.rs
# checks each 400 names its parameter.
#
# usage: scripts/api-fuzz.sh [NEXUS_BINARY]    (needs PostgreSQL as for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
nexus=${1:-target/debug/nexus}

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

. scripts/lib/scratch-server.sh
export NEXUS_JWT_SECRET="fuzz-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export NEXUS_ADMIN_PASSWORD="fuzz-admin-password"
export NEXUS_RATE_LIMIT=1000000 NEXUS_RATE_BURST=1000000
scratch_server "$nexus" "nexus_fuzz_$$"
token=$(scratch_token admin "$NEXUS_ADMIN_PASSWORD")
run() { "$st" run "$base/api/v2/openapi.json" -H "Authorization: Bearer $token" --max-examples 40 --workers 2 --seed 1 "$@"; }
run --checks all --exclude-path /api/v2/auth/logout --exclude-operation-id create
# An upload is any bytes: nothing in a body is "schema-violating" for it.
run --checks all --include-operation-id create \
  --exclude-checks negative_data_rejection,positive_data_acceptance \
  --phases examples,coverage,fuzzing
