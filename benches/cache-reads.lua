-- wrk script for benches/cache-reads.sh: GET /api/v2/records/customer/{id}
-- with ids drawn log-uniformly from 1..N (Zipf-like: P(k) ~ 1/k, a few hot
-- keys and a long tail), until each thread has made its share of REQUESTS.
-- Counts the X-Cache answers per tier.
local N, REQUESTS, TOKEN = 1000000, 100000, ""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  N = tonumber(args[1]) or N
  REQUESTS = tonumber(args[2]) or REQUESTS
  TOKEN = args[3] or ""
  share = math.ceil(REQUESTS / tonumber(args[4] or 1))
  seen, tiers = 0, { ["local"] = 0, redis = 0, miss = 0, other = 0 }
  math.randomseed(os.time() + id * 7919)
  wrk.headers["Authorization"] = "Bearer " .. TOKEN
end

function request()
  local k = math.floor(math.exp(math.random() * math.log(N))) 
  if k < 1 then k = 1 elseif k > N then k = N end
  return wrk.format("GET", "/api/v2/records/customer/" .. k)
end

function response(status, headers, body)
  local t = headers["x-cache"] or headers["X-Cache"]
  if status ~= 200 or t == nil or tiers[t] == nil then t = "other" end
  tiers[t] = tiers[t] + 1
  seen = seen + 1
  if seen >= share then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local total = { ["local"] = 0, redis = 0, miss = 0, other = 0 }
  for _, t in ipairs(threads) do
    for k, _ in pairs(total) do
      total[k] = total[k] + (t:get("tiers")[k] or 0)
    end
  end
  io.write(string.format(
    "cache-summary requests=%d local=%d redis=%d miss=%d other=%d errors=%d p50=%.3f p95=%.3f p99=%.3f max=%.3f\n",
    summary.requests, total["local"], total.redis, total.miss, total.other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
