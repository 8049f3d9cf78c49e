#!/usr/bin/env bash
# Cache bench: load 1,000,000 customers (write-through into Redis), then read
# 100,000 random keys through GET /api/v2/records/customer/{id} with a
# Zipf-like skew (wrk, CONNECTIONS at a time) from a release `nexus serve`.
# Prints the load's rate without Redis, write-through and write-behind
# (medians of ROUNDS alternating rounds), the share of reads each tier
# answered, the hit ratio and the p50/p95/p99 read latency.
#
# usage: [ROUNDS=3] benches/cache-reads.sh [ROWS] [READS] [CONNECTIONS]
# (PostgreSQL as for the tests; a private redis-server on a free port). wrk
# stops once READS are answered, or after 60 s at the latest.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
reads=${2:-100000}
conns=${3:-16}
command -v wrk >/dev/null && command -v redis-server >/dev/null || {
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get install -y -qq wrk redis-server >/dev/null
}
mkdir -p bench-data
csv=bench-data/customer-$rows.csv
[ -s "$csv" ] || python3 benches/gen-customers.py "$rows" > "$csv"
cargo build --release --quiet
nexus=target/release/nexus
ulimit -n 8192 || true

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis_dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" >/dev/null &
redis_pid=$!
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

. scripts/lib/scratch-server.sh
export NEXUS_JWT_SECRET="cache-bench-secret-0123456789-0123456789" NEXUS_ADMIN_PASSWORD="cache-bench-password"
export NEXUS_RATE_LIMIT=1000000000 NEXUS_RATE_BURST=1000000 NEXUS_CACHE_WARM_ROWS=0
export NEXUS_REDIS_PREFIX=bench REDIS_URL="redis://127.0.0.1:$port"
scratch_server "$nexus" nexus_cache_bench
trap 'scratch_cleanup; kill $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT

# ROUNDS rounds (default 3), each loading without Redis, write-through and
# write-behind one after the other into a fresh table and an empty Redis;
# medians are printed. A load's rate is the process's (the CLI waits for a
# write-behind queue to drain before it exits, so the drain counts) and the
# job's own (started → finished in nexus.jobs: what write-behind spares).
rounds=${ROUNDS:-3}
sed 's/strategy = "write_through", ttl = "30m"/strategy = "write_behind", ttl = "30m"/' \
  fixtures/models.toml > "$redis_dir/behind.toml"
fresh() {
  psql -q "$DATABASE_URL" -c "DROP TABLE IF EXISTS customer" -c "TRUNCATE nexus.jobs, nexus.rejects CASCADE" 2>/dev/null
  redis-cli -p "$port" flushall >/dev/null
}
job_rate() {
  psql -qAt "$DATABASE_URL" -c "SELECT round(rows_committed / extract(epoch FROM finished_at - started_at))
    FROM nexus.jobs ORDER BY created_at DESC LIMIT 1"
}
entries() { # the customer model's entries in Redis (hashes of up to 100 keys)
  redis-cli -p "$port" eval "local n = 0
    for _, h in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('HLEN', h) end
    return n" 0 "$NEXUS_REDIS_PREFIX:customer:*.."
}
load() { # name, then the environment for the load
  local name=$1 t0 t1
  shift
  fresh
  t0=$(date +%s.%N)
  env "$@" "$nexus" load --model customer "$csv" >/dev/null
  t1=$(date +%s.%N)
  echo "$name $(python3 -c "print(round($rows / ($t1 - $t0)))") $(job_rate) $(entries)" >> "$redis_dir/rates"
}
for r in $(seq 1 "$rounds"); do
  load none -u REDIS_URL
  load behind NEXUS_MODELS="$redis_dir/behind.toml"
  load through REDIS_URL="$REDIS_URL"
done
sort "$redis_dir/rates" | sed "s/^/  round: /"
python3 - "$redis_dir/rates" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, wall, job, entries = line.split()
    runs.setdefault(name, []).append((int(wall), int(job), int(entries)))
med = {n: (statistics.median(w for w, _, _ in v), statistics.median(j for _, j, _ in v), min(e for _, _, e in v))
       for n, v in runs.items()}
none_wall, none_job, _ = med["none"]
print(f"{len(runs['none'])} rounds, medians (rows/s, process | job; share of the load without Redis):")
print(f"  without Redis: {none_wall:.0f} | {none_job:.0f}")
for n, label in (("through", "write-through"), ("behind", "write-behind")):
    w, j, e = med[n]
    print(f"  {label}: {w:.0f} ({w / none_wall:.0%}) | {j:.0f} ({j / none_job:.0%}); Redis entries after it (fewest) {e}")
PY
echo "Redis entries: $(entries), used memory $(redis-cli -p "$port" info memory | sed -n 's/^used_memory_human://p' | tr -d '\r')"

token=$(scratch_token admin "$NEXUS_ADMIN_PASSWORD")
out=$(wrk -t2 -c"$conns" -d60s --timeout 10s -s benches/cache-reads.lua "$base/api/v2/records/customer/1" \
  -- "$rows" "$reads" "$token" 2)
line=$(grep '^cache-summary' <<<"$out")
python3 - "$line" "$conns" <<'PY'
import sys
f = dict(kv.split("=") for kv in sys.argv[1].split()[1:])
n = int(f["requests"])
local, redis, miss = int(f["local"]), int(f["redis"]), int(f["miss"])
print(f"reads: {n} over {sys.argv[2]} connections, errors {f['errors']}, non-hits/other {f['other']}")
print(f"answered by: local {local / n:.1%}, redis {redis / n:.1%}, postgres (miss) {miss / n:.1%}")
print(f"hit ratio: {(local + redis) / n:.1%}")
print(f"latency: p50 {f['p50']} ms, p95 {f['p95']} ms, p99 {f['p99']} ms, max {f['max']} ms")
PY
