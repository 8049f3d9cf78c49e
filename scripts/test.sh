#!/usr/bin/env bash
# Runs the whole test suite. Tests need a PostgreSQL server on
# 127.0.0.1:5432 that user `postgres` can reach (NEXUS_TEST_PG overrides the
# URL) and Redis on 127.0.0.1:6379 (NEXUS_TEST_REDIS); this script uses the
# running ones, starts installed ones, or installs Debian's packages and
# starts them. Each test makes its own database and Redis key prefix. The
# fuzz targets need the nightly toolchain (installed beside stable here);
# cargo-fuzz is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
need_pkg_force() { # package
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
need_pkg() { # command package
  command -v "$1" >/dev/null 2>&1 && return
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

export NEXUS_TEST_PG=${NEXUS_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  need_pkg pg_ctlcluster postgresql
  need_pkg pg_isready postgresql-client
  version=$(ls /etc/postgresql | sort -n | tail -1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main start
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi
# A fresh Debian cluster asks for a password over TCP: give postgres one.
if ! psql "$NEXUS_TEST_PG" -qAtc 'SELECT 1' >/dev/null 2>&1; then
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
  export NEXUS_TEST_PG=postgres://postgres:postgres@127.0.0.1:5432/postgres
fi
export NEXUS_TEST_REDIS=${NEXUS_TEST_REDIS:-redis://127.0.0.1:6379}
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  need_pkg redis-server redis-server
  # Nothing on disk: the tests' keys are theirs to clean up.
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 60); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
# The dashboard test drives Debian's Chromium with playwright-core.
need_pkg chromium chromium
need_pkg node nodejs
need_pkg npm npm
[ -d tests/browser/node_modules/playwright-core ] ||
  npm ci --prefix tests/browser --no-audit --no-fund --silent
# The MCP tests drive the server with the official MCP client (PyPI `mcp`).
if ! tests/mcp/.venv/bin/python -c 'import mcp' 2>/dev/null; then
  python3 -m venv tests/mcp/.venv 2>/dev/null || { need_pkg_force python3-venv; python3 -m venv tests/mcp/.venv; }
  tests/mcp/.venv/bin/pip install -q --disable-pip-version-check -r tests/mcp/requirements.txt
fi
# The columnar tests' files come from pyarrow, a writer nobody here wrote;
# GNU time reports a load's peak memory.
if ! tests/columnar/.venv/bin/python -c 'import pyarrow' 2>/dev/null; then
  python3 -m venv tests/columnar/.venv 2>/dev/null || { need_pkg_force python3-venv; python3 -m venv tests/columnar/.venv; }
  tests/columnar/.venv/bin/pip install -q --disable-pip-version-check -r tests/columnar/requirements.txt
fi
# Upload storage in S3 is tested against a real S3 API server (moto, PyPI).
if ! [ -x tests/s3/.venv/bin/moto_server ]; then
  python3 -m venv tests/s3/.venv 2>/dev/null || { need_pkg_force python3-venv; python3 -m venv tests/s3/.venv; }
  tests/s3/.venv/bin/pip install -q --disable-pip-version-check -r tests/s3/requirements.txt
fi
[ -x /usr/bin/time ] || need_pkg_force time
# TLS tests make their certificates with openssl and talk HTTPS with curl;
# deploy/ is checked with Debian's nginx and Prometheus (scripts/deploy-test.sh).
need_pkg openssl openssl
need_pkg curl curl
need_pkg envsubst gettext-base
need_pkg nginx nginx
need_pkg promtool prometheus
need_pkg docker-compose docker-compose || true
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The API contract, fuzzed against a live server (counts as one more test).
bash scripts/api-fuzz.sh target/debug/nexus
fuzz=$?
# What parses untrusted bytes, fuzzed for a bounded time (one more test).
bash scripts/fuzz.sh
libfuzz=$?
# deploy/ run natively: nginx, two servers, Prometheus (one more test).
bash scripts/deploy-test.sh target/debug/nexus
deploy=$?
set -e
awk -v fuzz="$fuzz" -v libfuzz="$libfuzz" -v deploy="$deploy" '/^test result:/ { p += $4; f += $6 }
  END { if (fuzz == 0) p++; else f++; if (libfuzz == 0) p++; else f++; if (deploy == 0) p++; else f++;
        printf "total: %d passed, %d failed\n", p, f }' "$log"
[ "$rc" = 0 ] && [ "$fuzz" = 0 ] && [ "$libfuzz" = 0 ] && [ "$deploy" = 0 ]
