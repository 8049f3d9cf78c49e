#!/usr/bin/env bash
# deploy/ proven with the real programs (containers cannot be pulled here,
# so the compose topology runs natively): the alert rules' unit tests
# (promtool), Debian's nginx with deploy's configuration (ports and
# certificate paths filled in, a CA made with openssl) in front of two
# `nexus serve` processes, and Debian's Prometheus with deploy's
# configuration scraping both — every dashboard query must evaluate and
# every metric the rules and the dashboard read must exist. The servers
# have separate data directories and keep uploads in S3 (moto, a real S3
# API server). Through nginx over HTTPS: log in, load, and SIGKILL the
# server running a 1M-row job — the other fetches the upload from the
# bucket and finishes it with exact counts, watched over wss://.
#
# usage: scripts/deploy-test.sh [NEXUS_BINARY]   (NEXUS_TEST_PG: the server)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/nexus}")
pg=${NEXUS_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)
db=nexus_deploy_$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "deploy test: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits up to $1 seconds for the command after it to succeed.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

echo "== alert rules"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts.test.yml

echo "== compose.yaml"
# The compose spec as docker compose reads it; Debian's docker-compose (v1)
# wants a `version` instead of the spec's `name`, and its files to exist.
compose_env=(POSTGRES_PASSWORD=x REDIS_PASSWORD=x NEXUS_JWT_SECRET=x GRAFANA_PASSWORD=x MINIO_PASSWORD=x)
mkdir -p "$work/compose/deploy/secrets"
cp -r deploy/. "$work/compose/deploy/"
for f in ca.pem postgres.pem postgres.key site.pem site.key; do : > "$work/compose/deploy/secrets/$f"; done
if docker compose version >/dev/null 2>&1; then
  env "${compose_env[@]}" docker compose -f "$work/compose/deploy/compose.yaml" config -q
elif command -v docker-compose >/dev/null; then
  sed -i 's/^name: nexus$/version: "3.9"/' "$work/compose/deploy/compose.yaml"
  env "${compose_env[@]}" docker-compose -f "$work/compose/deploy/compose.yaml" config -q
else
  echo "(no docker compose here: compose.yaml not checked)"
fi

echo "== certificates"
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=deploy test CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout site.key -out site.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > site.ext
  openssl x509 -req -in site.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -out site.pem -extfile site.ext 2>/dev/null
)

echo "== S3 for uploads (moto)"
# A real S3 API server (moto, in the venv scripts/test.sh makes); uploads
# go to its bucket, so either server runs a job whichever took the upload.
venv=tests/s3/.venv/bin
[ -x "$venv/moto_server" ] || fail "$venv/moto_server is missing (scripts/test.sh makes it)"
"$venv/moto_server" -H 127.0.0.1 -p 0 > "$work/moto.log" 2>&1 &
pids+=($!)
wait_until 60 grep -q 'Running on http://' "$work/moto.log" || fail "moto did not start"
export AWS_ENDPOINT_URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/moto.log" | head -1) \
  AWS_ACCESS_KEY_ID=deploy AWS_SECRET_ACCESS_KEY=deploy AWS_REGION=us-east-1
s3() { # python code using `s3`, a boto3 client of moto
  "$venv/python" -c "import os, boto3; s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])
$1"
}
s3 "s3.create_bucket(Bucket='nexus-uploads')"
objects() { s3 "print(len(s3.list_objects_v2(Bucket='nexus-uploads').get('Contents', [])))"; }

echo "== two nexus servers"
psql "$pg" -qc "CREATE DATABASE $db" >/dev/null
url="${pg%/*}/$db"
api_ports=("$(free_port)" "$(free_port)") metric_ports=("$(free_port)" "$(free_port)")
server_pids=()
# Starts (or restarts) server $1 (1 or 2) on its ports; its log is appended.
start_server() {
  local n=$1 api=${api_ports[$(($1 - 1))]} metrics=${metric_ports[$(($1 - 1))]}
  # Each server has its own disk; uploads are in the bucket.
  DATABASE_URL=$url NEXUS_DATA_DIR=$work/data-$n NEXUS_STORAGE=s3://nexus-uploads/uploads NEXUS_JWT_SECRET=deploy-test-secret-0123456789-abcdef \
    NEXUS_ADMIN_PASSWORD=deploy-admin-pw NEXUS_BIND=127.0.0.1:$api NEXUS_METRICS_BIND=127.0.0.1:$metrics \
    NEXUS_TRUSTED_PROXIES=127.0.0.1 NEXUS_JOB_LEASE=3s NEXUS_LOG_FORMAT=json \
    RUST_LOG=warn,nexus::jobs::worker=info \
    "$bin" serve >> "$work/nexus-$n.log" 2>&1 &
  pids+=($!)
  server_pids[$((n - 1))]=$!
  wait_until 60 curl -fsS "http://127.0.0.1:$api/health" || { cat "$work/nexus-$n.log"; fail "nexus $n did not start"; }
}
start_server 1
start_server 2

echo "== nginx with deploy/nginx/nexus.conf.template"
https=$(free_port)
export LISTEN_PORT=$https HTTP_PORT=$(free_port) TLS_CERT=$work/site.pem TLS_KEY=$work/site.key \
  NEXUS_1=127.0.0.1:${api_ports[0]} NEXUS_2=127.0.0.1:${api_ports[1]} MAX_UPLOAD=200m
# Only these variables: nginx's own ($host, …) stay as they are.
envsubst '${LISTEN_PORT} ${HTTP_PORT} ${TLS_CERT} ${TLS_KEY} ${NEXUS_1} ${NEXUS_2} ${MAX_UPLOAD}' \
  < deploy/nginx/nexus.conf.template > "$work/nexus.conf"
cat > "$work/nginx.conf" <<EOF
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  include $work/nexus.conf;
}
EOF
nginx -t -q -p "$work" -c "$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf"
site="https://localhost:$https"
tls=(--cacert "$work/ca.pem" -sS)
wait_until 20 curl "${tls[@]}" -f "$site/health" || fail "nginx does not answer"
headers=$(curl "${tls[@]}" -D - -o /dev/null --http2 "$site/health")
grep -q '^HTTP/2 200' <<<"$headers" || fail "no HTTP/2 through nginx: $headers"
grep -qi '^strict-transport-security:' <<<"$headers" || fail "no HSTS header: $headers"
[ "$(curl "${tls[@]}" -o /dev/null -w '%{http_code}' "$site/metrics")" = 404 ] || fail "/metrics is public"

echo "== a load through nginx"
token=$(curl "${tls[@]}" -f -H 'content-type: application/json' \
  -d '{"username": "admin", "password": "deploy-admin-pw"}' "$site/api/v2/auth/login" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
python3 benches/gen-customers.py 20000 --bad 1000 > "$work/customers.csv"
job=$(curl "${tls[@]}" -f -H "authorization: Bearer $token" -H 'content-type: text/csv' \
  --data-binary "@$work/customers.csv" "$site/api/v2/jobs?model=customer" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
job_done() {
  curl "${tls[@]}" -f -H "authorization: Bearer $token" "$site/api/v2/jobs/$job" > "$work/job.json" &&
    python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); sys.exit(j["status"] not in ("succeeded", "failed"))' "$work/job.json"
}
wait_until 120 job_done || fail "the job did not end: $(cat "$work/job.json")"
python3 - "$work/job.json" <<'PY' || fail "wrong counts: $(cat "$work/job.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["status"] == "succeeded", j
assert j["rows_committed"] == 19980 and j["rows_rejected"] == 20, j
PY

echo "== the client's address through nginx"
# nginx appends the peer to X-Forwarded-For; the servers trust nginx
# (NEXUS_TRUSTED_PROXIES) and take the hop before it as the client: login
# throttling and the audit log are per client, not per proxy.
login() { # X-Forwarded-For, password → HTTP status
  curl "${tls[@]}" -o /dev/null -w '%{http_code}' -H "x-forwarded-for: $1" -H 'content-type: application/json' \
    -d "{\"username\": \"admin\", \"password\": \"$2\"}" "$site/api/v2/auth/login"
}
# Five failures are free, then each makes the next wait (1 s, 2 s, 4 s …):
# guessing on, one client is soon refused.
failures=0
while code=$(login 203.0.113.7 wrong-password); [ "$code" = 401 ]; do
  failures=$((failures + 1))
  [ $failures -le 12 ] || fail "a client guessing passwords is never throttled"
done
[ "$code" = 429 ] && [ $failures -ge 5 ] || fail "after $failures failed logins: $code"
code=$(login 203.0.113.8 deploy-admin-pw)
[ "$code" = 200 ] || fail "another client was throttled too ($code): the proxy was taken for the client"
seen=$(psql "$url" -qAtc "SELECT count(*) FROM nexus.audit_log WHERE ip = '203.0.113.7'")
[ "$seen" -ge 5 ] || fail "the audit log does not name the client ($seen events)"

echo "== the server running a job is killed; the other finishes it"
python3 benches/gen-customers.py 1000000 --first 100001 --bad 1000 > "$work/big.csv"
job=$(curl "${tls[@]}" -f -H "authorization: Bearer $token" -H 'content-type: text/csv' \
  --data-binary "@$work/big.csv" "$site/api/v2/jobs?model=customer" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
# Watched over wss:// through nginx as a dashboard does, reconnecting when
# the server it is connected to is the one killed.
python3 scripts/ws-watch.py localhost "$https" "$work/ca.pem" "$token" "$job" 300 > "$work/ws.log" 2>&1 &
watcher=$!
pids+=($watcher)
running_on() { grep -l "\"job claimed\".*$job\|$job.*\"job claimed\"" "$work"/nexus-*.log | head -1; }
batches() { psql "$url" -qAtc "SELECT count(*) FROM nexus.job_batches WHERE job_id = '$job'"; }
under_way() { [ -n "$(running_on)" ] && [ "$(batches)" -ge 3 ]; }
wait_until 120 under_way || fail "no server started the big job"
victim=$(running_on)
n=${victim##*/nexus-}; n=${n%.log}
kill -9 "${server_pids[$((n - 1))]}"
wait "${server_pids[$((n - 1))]}" 2>/dev/null || true
echo "killed server $n with $(batches) batches committed"
wait_until 300 job_done || fail "the big job did not end: $(cat "$work/job.json")"
python3 - "$work/job.json" <<'PY' || fail "wrong counts after the kill: $(cat "$work/job.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["status"] == "succeeded", j
assert j["rows_committed"] == 999000 and j["rows_rejected"] == 1000, j
PY
[ "$(grep -c "job claimed.*$job\|$job.*job claimed" "$work"/nexus-*.log | grep -vc ':0$')" = 2 ] ||
  fail "the job was not taken over by the other server"
rows=$(psql "$url" -qAtc "SELECT count(*), count(DISTINCT id) FROM customer WHERE id > 100000")
[ "$rows" = "999000|999000" ] || fail "rows in the table after the kill: $rows (count|distinct ids)"
wait "$watcher" || fail "the wss:// watcher saw no end: $(tail -5 "$work/ws.log")"
python3 - "$work/ws.log" <<'PY' || fail "wss:// progress: $(grep -c . "$work/ws.log") lines, $(tail -3 "$work/ws.log")"
import sys
lines = [l.split() for l in open(sys.argv[1])]
committed = [int(l[1]) for l in lines if l[0] == "progress"]
assert len(committed) >= 3, committed
assert committed == sorted(committed), "progress went backwards"
assert lines[-1] == ["job", "succeeded"], lines[-1]
PY
echo "wss:// through nginx: $(grep -c ^progress "$work/ws.log") progress messages, $(grep -c ^reconnect "$work/ws.log") reconnects, then succeeded"
# Succeeded jobs' uploads leave the bucket, and the finishing server's
# copy its disk (the killed server's copy is swept when it is idle).
bucket_empty() { [ "$(objects)" = 0 ]; }
wait_until 30 bucket_empty || fail "uploads left in the bucket: $(objects)"
left=$(find "$work/data-$((3 - n))/fetched" -type f)
[ -z "$left" ] || fail "fetched copies left behind: $left"
start_server "$n"

echo "== Prometheus with deploy/prometheus"
prom=$(free_port)
mkdir -p "$work/prometheus"
cp deploy/prometheus/alerts.yml "$work/prometheus/"
targets="\"127.0.0.1:${metric_ports[0]}\", \"127.0.0.1:${metric_ports[1]}\""
sed -e "s/\"nexus-1:9464\", \"nexus-2:9464\"/$targets/" -e 's/scrape_interval: 15s/scrape_interval: 1s/' \
  deploy/prometheus/prometheus.yml > "$work/prometheus/prometheus.yml"
grep -q "127.0.0.1:${metric_ports[1]}" "$work/prometheus/prometheus.yml" || fail "the targets were not templated"
prometheus --config.file="$work/prometheus/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom" > "$work/prometheus.log" 2>&1 &
pids+=($!)
query() { curl -sS -G "http://127.0.0.1:$prom/api/v1/query" --data-urlencode "query=$1"; }
both_up() { [ "$(query 'sum(up{job="nexus"})' | python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')" = 2 ]; }
wait_until 60 both_up || { tail "$work/prometheus.log"; fail "Prometheus does not see both servers up"; }
rules_loaded() { curl -sS "http://127.0.0.1:$prom/api/v1/rules" | python3 -c 'import json, sys; sys.exit(len(json.load(sys.stdin)["data"]["groups"]) < 3)'; }
wait_until 30 rules_loaded || fail "Prometheus did not load the alert rules"

for n in 0 1; do curl -fsS "http://127.0.0.1:${metric_ports[$n]}/metrics" > "$work/metrics-$n.txt"; done
python3 - "$prom" "$work/metrics-0.txt" "$work/metrics-1.txt" <<'PY'
import json, re, sys, urllib.parse, urllib.request
prom, exposed = sys.argv[1], set()
for path in sys.argv[2:]:
    for line in open(path):
        if not line.startswith("#") and line.strip():
            exposed.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
dashboard = json.load(open("deploy/grafana/dashboards/nexus.json"))
exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
alerts = open("deploy/prometheus/alerts.yml").read()
bad = []
for expr in exprs:
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = json.load(urllib.request.urlopen(url))
    except Exception as e:  # a 400 is a query Prometheus cannot parse
        bad.append(f"{expr}: {e}")
        continue
    if answer.get("status") != "success":
        bad.append(f"{expr}: {answer}")
names = set(re.findall(r"\bnexus_[a-z_]+", " ".join(exprs) + alerts))
for name in sorted(names):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if name not in exposed and not any(e.startswith(base + "_") or e == base for e in exposed):
        bad.append(f"{name}: read by the rules or the dashboard, not exposed by nexus")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"{len(exprs)} dashboard queries evaluated, {len(names)} metrics exposed by both servers")
PY
echo "deploy test: passed"
