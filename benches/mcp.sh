#!/usr/bin/env bash
# What MCP costs: the same 1,000,000-row customer CSV loaded by `nexus load`
# and by `load_file` over `nexus mcp` (stdio, following progress, with the
# official Python client), alternating into fresh tables, 3 rounds each;
# then the latency of 200 `job_status` calls over stdio. Prints medians.
#
# usage: benches/mcp.sh [ROWS]   (needs PostgreSQL as benches/vs-psql.sh does,
#        and the MCP client's venv: tests/mcp/.venv, made by scripts/test.sh)
source "$(dirname "$0")/common.sh"
db=nexus_bench_mcp
python=tests/mcp/.venv/bin/python
[ -x "$python" ] || { echo "needs $python (scripts/test.sh makes it)"; exit 2; }
csv="$(pwd)/$data/customer-$rows.csv"
[ -s "$csv" ] || python3 benches/gen-customers.py "$rows" > "$csv"
cargo build --release --quiet
export NEXUS_BIN=$(pwd)/target/release/nexus NEXUS_DATA_DIR=$(pwd)/$data/mcp RUST_LOG=warn
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
export DATABASE_URL="${admin_url%/*}/$db"
$NEXUS_BIN migrate --schema-only >/dev/null
fresh() { psql -q "$DATABASE_URL" -c "DROP TABLE IF EXISTS customer" -c "TRUNCATE nexus.jobs, nexus.rejects, nexus.loaded_files CASCADE"; }
now() { date +%s.%N; }
cli=(); mcp=(); p50=(); p99=()
for round in $(seq 1 "$rounds"); do
  fresh
  t0=$(now); $NEXUS_BIN load --model customer "$csv" >/dev/null; t1=$(now)
  cli+=("$(python3 -c "print(round($rows/($t1-$t0)))")")
  fresh
  read -r n secs notes lat50 lat99 < <($python benches/mcp_load.py "$csv" 200)
  [ "$n" = "$rows" ] || { echo "MCP loaded $n rows, expected $rows"; exit 1; }
  mcp+=("$(python3 -c "print(round($rows/$secs))")"); p50+=("$lat50"); p99+=("$lat99")
  echo "round $round: nexus load ${cli[-1]} rows/s, MCP load_file ${mcp[-1]} rows/s ($notes progress notifications), job_status p50 ${lat50} ms p99 ${lat99} ms"
done
python3 - "${cli[*]}" "${mcp[*]}" "${p50[*]}" "${p99[*]}" <<'PY'
import statistics, sys
c, m = ([int(x) for x in a.split()] for a in sys.argv[1:3])
p50, p99 = ([float(x) for x in a.split()] for a in sys.argv[3:5])
print(f"median nexus load: {statistics.median(c):,.0f} rows/s")
print(f"median MCP load_file (stdio, following progress): {statistics.median(m):,.0f} rows/s")
print(f"ratio MCP/CLI: {statistics.median(m) / statistics.median(c):.2f}")
print(f"job_status over stdio: median p50 {statistics.median(p50):.2f} ms, median p99 {statistics.median(p99):.2f} ms")
PY
