#!/usr/bin/env bash
# Side by side: `psql \copy` (CSV) against `nexus load` of the same
# deterministic 1,000,000-row customer CSV, and of the same rows as NDJSON
# and as Parquet (snappy, written by pyarrow), and the machine's ceiling: two
# parallel `psql \copy (FORMAT binary)` streams of the same rows (made with
# `COPY … TO … (FORMAT binary)`). Each into a fresh logged table with the
# primary key, alternating, 3 rounds each. Prints the median rows/s of each,
# ratios, and nexus's peak RSS (from /usr/bin/time -v).
#
# usage: benches/vs-psql.sh [ROWS]     (needs PostgreSQL; DATABASE_URL or
#        the local server on 127.0.0.1:5432 as user postgres)
source "$(dirname "$0")/common.sh"
# Like for like: nexus does not encrypt without sslmode, so neither does
# psql (libpq would negotiate TLS with a server that has ssl = on, as
# Debian's has, and pay for it on every COPY byte).
export PGSSLMODE=disable
db=nexus_bench
csv="$data/customer-$rows.csv"
[ -s "$csv" ] || python3 benches/gen-customers.py "$rows" > "$csv"
# The same rows as NDJSON: numbers and booleans as JSON values, the rest strings.
ndjson="$data/customer-$rows.ndjson"
[ -s "$ndjson" ] || python3 - "$csv" > "$ndjson" <<'PY'
import csv, json, sys
numbers = {"id", "credit_limit", "score"}
for row in csv.DictReader(open(sys.argv[1], newline="")):
    obj = {k: (None if v == "" else json.loads(v) if k in numbers else v == "true" if k == "active" else v)
           for k, v in row.items()}
    print(json.dumps(obj, ensure_ascii=False))
PY
# The same rows as Parquet, typed as the model's columns (the key as
# arrow.uuid), by pyarrow (the test suite's venv).
parquet="$data/customer-$rows.uuid.parquet"
py=tests/columnar/.venv/bin/python
[ -x "$py" ] || { python3 -m venv tests/columnar/.venv && $py -m pip install -q -r tests/columnar/requirements.txt; }
[ -s "$parquet" ] || $py - "$csv" "$parquet" <<'PY'
import sys
import pyarrow as pa, pyarrow.csv as pcsv, pyarrow.parquet as pq
types = {"id": pa.int64(), "credit_limit": pa.decimal128(12, 2), "created_at": pa.timestamp("us", tz="UTC"),
         "active": pa.bool_(), "score": pa.int32()}
strings = ["external_id", "name", "email", "country", "segment"]
t = pcsv.read_csv(sys.argv[1], convert_options=pcsv.ConvertOptions(
    column_types={**types, **{c: pa.string() for c in strings}}, strings_can_be_null=True))
import uuid
ids = t.column("external_id").to_pylist()
t = t.set_column(t.schema.get_field_index("external_id"), pa.field("external_id", pa.uuid()),
                 pa.array([None if s is None else uuid.UUID(s).bytes for s in ids], pa.uuid()))
pq.write_table(t, sys.argv[2], compression="snappy")
PY
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)"; exit 2; }
cargo build --release --quiet
nexus=target/release/nexus

psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
url="${admin_url%/*}/$db"
export DATABASE_URL="$url"
$nexus migrate --schema-only >/dev/null

now() { date +%s.%N; }
psql_rates=(); nexus_rates=(); ndjson_rates=(); parquet_rates=(); ceiling_rates=(); rss=()
table_ddl="(id bigint PRIMARY KEY, external_id uuid, name text NOT NULL,
        email text NOT NULL, country char(2), segment text, credit_limit numeric(12,2),
        created_at timestamptz, active boolean, score integer)"
# Every timed run starts from the same server state: no table of an earlier
# run left for autovacuum to work on while it runs, its WAL checkpointed.
settle() {
  psql -q "$url" -c "DROP TABLE IF EXISTS customer" -c "DROP TABLE IF EXISTS customer_bin" \
    -c "TRUNCATE nexus.jobs, nexus.rejects CASCADE" -c "CHECKPOINT"
}
# Loads FILE into a fresh `customer` table: sets $rate (rows/s), adds its
# peak RSS to rss, and checks every row arrived.
nexus_load() {
  settle
  local t0 t1 n
  t0=$(now)
  /usr/bin/time -v -o "$data/time.txt" $nexus load --model customer "$1" >/dev/null
  t1=$(now)
  rate=$(python3 -c "print(round($rows/($t1-$t0)))")
  rss+=("$(awk '/Maximum resident/ {print $NF}' "$data/time.txt")")
  n=$(psql -qtA "$url" -c "SELECT count(*) FROM customer")
  [ "$n" = "$rows" ] || { echo "nexus loaded $n rows of $1, expected $rows"; exit 1; }
}
for round in $(seq 1 "$rounds"); do
  settle
  psql -q "$url" -c "DROP TABLE IF EXISTS customer_psql" \
    -c "CREATE TABLE customer_psql $table_ddl" -c "CHECKPOINT"
  t0=$(now)
  psql -q "$url" -c "\\copy customer_psql FROM '$csv' WITH (FORMAT csv, HEADER)"
  t1=$(now)
  psql_rates+=("$(python3 -c "print(round($rows/($t1-$t0)))")")

  # The ceiling: the same rows in PostgreSQL's binary form, two streams.
  if [ ! -s "$data/customer-$rows.bin1" ]; then
    for half in 0 1; do
      psql -q "$url" -c "\\copy (SELECT * FROM customer_psql WHERE id % 2 = $half) TO '$data/customer-$rows.bin$half' (FORMAT binary)"
    done
  fi
  settle
  psql -q "$url" -c "DROP TABLE IF EXISTS customer_psql" -c "CREATE TABLE customer_bin $table_ddl" -c "CHECKPOINT"
  t0=$(now)
  for half in 0 1; do
    psql -q "$url" -c "\\copy customer_bin FROM '$data/customer-$rows.bin$half' (FORMAT binary)" &
  done
  wait
  t1=$(now)
  ceiling_rates+=("$(python3 -c "print(round($rows/($t1-$t0)))")")

  nexus_load "$csv"; nexus_rates+=("$rate")
  nexus_load "$ndjson"; ndjson_rates+=("$rate")
  nexus_load "$parquet"; parquet_rates+=("$rate")
  echo "round $round: psql ${psql_rates[-1]} rows/s, ceiling ${ceiling_rates[-1]} rows/s, nexus ${nexus_rates[-1]} rows/s, NDJSON ${ndjson_rates[-1]} rows/s, Parquet ${parquet_rates[-1]} rows/s, nexus peak RSS ${rss[-3]}/${rss[-2]}/${rss[-1]} KiB"
done
python3 - "${psql_rates[*]}" "${nexus_rates[*]}" "${rss[*]}" "${ndjson_rates[*]}" "${parquet_rates[*]}" "${ceiling_rates[*]}" <<'PY'
import statistics, sys
p = [int(x) for x in sys.argv[1].split()]
n = [int(x) for x in sys.argv[2].split()]
r = [int(x) for x in sys.argv[3].split()]
j = [int(x) for x in sys.argv[4].split()]
mp, mn = statistics.median(p), statistics.median(n)
print(f"median psql \\copy: {mp:,.0f} rows/s")
print(f"median nexus load: {mn:,.0f} rows/s")
print(f"ratio nexus/psql: {mn / mp:.2f}")
print(f"median nexus load of the same rows as NDJSON: {statistics.median(j):,.0f} rows/s ({statistics.median(j) / mp:.2f} x psql's CSV)")
q = [int(x) for x in sys.argv[5].split()]
c = [int(x) for x in sys.argv[6].split()]
mc = statistics.median(c)
print(f"median ceiling (two parallel psql \\copy binary streams): {mc:,.0f} rows/s ({mc / mp:.2f} x psql's CSV)")
print(f"nexus CSV at {mn / mc:.0%} of the ceiling")
print(f"median nexus load of the same rows as Parquet: {statistics.median(q):,.0f} rows/s ({statistics.median(q) / mc:.0%} of the ceiling)")
print(f"nexus peak RSS: {max(r) / 1024:.1f} MiB (max of {len(r)} runs)")
PY
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db"
