#!/usr/bin/env bash
# Sets up Nexus on a fresh Debian/Ubuntu machine and runs the main job: the
# demo customer file loaded into the embedded default database (a private
# PostgreSQL under ./.nexus/pg, from the installed server binaries; as root,
# under /var/lib/nexus/clusters/, since PostgreSQL then runs as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v cargo >/dev/null 2>&1 || missing+=(curl ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
cargo build --release --locked
unset DATABASE_URL
./target/release/nexus migrate
./target/release/nexus load --model customer fixtures/customers.csv
