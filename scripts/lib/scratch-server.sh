# Sourced by scripts/ and benches/: a `nexus serve` on a database and a data
# directory of its own, both removed when the calling script exits.
#
#   . scripts/lib/scratch-server.sh
#   scratch_server BINARY DB_NAME     # sets $base (http://host:port), $pid, $work
#   token=$(scratch_token USER PASSWORD)
#
# The caller exports NEXUS_JWT_SECRET, NEXUS_ADMIN_PASSWORD and any other
# settings first. PostgreSQL: NEXUS_TEST_PG, else the local server.

scratch_admin_url=${NEXUS_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}

scratch_cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  [ -n "${scratch_db:-}" ] &&
    psql -q "$scratch_admin_url" -c "DROP DATABASE IF EXISTS $scratch_db WITH (FORCE)" >/dev/null 2>&1
  [ -n "${work:-}" ] && rm -rf "$work"
  return 0
}

scratch_server() {
  local nexus=$1
  scratch_db=$2
  work=$(mktemp -d)
  trap scratch_cleanup EXIT
  PGOPTIONS="-c client_min_messages=warning" psql -q "$scratch_admin_url" \
    -c "DROP DATABASE IF EXISTS $scratch_db WITH (FORCE)" -c "CREATE DATABASE $scratch_db"
  export DATABASE_URL="${scratch_admin_url%/*}/$scratch_db" NEXUS_DATA_DIR="$work"
  export RUST_LOG=${RUST_LOG:-warn}
  "$nexus" serve --bind 127.0.0.1:0 2> "$work/stderr" &
  pid=$!
  base=
  for _ in $(seq 1 200); do
    base=$(sed -n 's/^nexus: listening on //p' "$work/stderr")
    [ -n "$base" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the server did not start:" >&2
  cat "$work/stderr" >&2
  return 1
}

scratch_token() {
  python3 - "$base" "$1" "$2" <<'PY'
import json, sys, urllib.request
base, user, password = sys.argv[1:4]
body = json.dumps({"username": user, "password": password}).encode()
req = urllib.request.Request(base + "/api/v2/auth/login", body, {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["access_token"])
PY
}
