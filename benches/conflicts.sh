#!/usr/bin/env bash
# Unique conflicts at scale (issue 9): how fast a load rejects rows whose
# keys are already in the table, and what a few duplicates cost.
#
#   all duplicates: 1M customers loaded, then the same file again with
#                   --force: every row is a rejected duplicate (rows/s).
#   1% duplicates:  into a table holding 1M customers, 1M new rows with 0%
#                   or 1% of their ids already loaded, alternating, ROUNDS
#                   each; medians and the ratio.
#
# usage: benches/conflicts.sh [ROWS]    (needs PostgreSQL; as vs-psql.sh)
source "$(dirname "$0")/common.sh"
db=nexus_bench_conflicts
base="$data/customer-$rows.csv"
fresh="$data/customer-$rows-fresh.csv"
dups="$data/customer-$rows-dup1pct.csv"
[ -s "$base" ] || python3 benches/gen-customers.py "$rows" > "$base"
[ -s "$fresh" ] || python3 benches/gen-customers.py "$rows" --first $((rows + 1)) --seed 7 > "$fresh"
[ -s "$dups" ] || python3 benches/gen-customers.py "$rows" --first $((rows + 1)) --seed 7 --dup-every 100 > "$dups"
cargo build --release --quiet
nexus=target/release/nexus

psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
export DATABASE_URL="${admin_url%/*}/$db"
$nexus migrate --schema-only >/dev/null

now() { date +%s.%N; }
rate() { python3 -c "print(round($1/($3-$2)))"; }
fresh_base() {
  psql -q "$DATABASE_URL" -c "DROP TABLE IF EXISTS customer" -c "TRUNCATE nexus.jobs, nexus.rejects CASCADE"
  $nexus load --model customer "$base" >/dev/null
}

fresh_base
t0=$(now)
# Nothing loads, so the job fails (exit 1) by design: its counts are what matter.
$nexus load --model customer --force --json "$base" > "$data/dup-all.json" 2>/dev/null || [ $? = 1 ]
t1=$(now)
rejected=$(python3 -c "import json; print(json.load(open('$data/dup-all.json'))['rows_rejected'])")
[ "$rejected" = "$rows" ] || { echo "expected $rows rejects, got $rejected"; exit 1; }
echo "all duplicates: $rows rows rejected at $(rate "$rows" "$t0" "$t1") rows/s"

clean=(); dup=()
for round in $(seq 1 "$rounds"); do
  for kind in clean dup; do
    fresh_base
    file=$fresh; [ $kind = dup ] && file=$dups
    t0=$(now)
    $nexus load --model customer --json "$file" > "$data/$kind.json"
    t1=$(now)
    r=$(rate "$rows" "$t0" "$t1")
    if [ $kind = clean ]; then clean+=("$r"); else dup+=("$r"); fi
    echo "round $round $kind: $r rows/s ($(python3 -c "import json; j=json.load(open('$data/$kind.json')); print(j['rows_rejected'], 'rejected')"))"
  done
done
python3 - "${clean[*]}" "${dup[*]}" <<'PY'
import statistics, sys
c = [int(x) for x in sys.argv[1].split()]
d = [int(x) for x in sys.argv[2].split()]
mc, md = statistics.median(c), statistics.median(d)
print(f"median 0% duplicates: {mc:,.0f} rows/s")
print(f"median 1% duplicates: {md:,.0f} rows/s")
print(f"1% duplicates cost {100 * (1 - md / mc):.1f}% of the speed")
PY
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db"
