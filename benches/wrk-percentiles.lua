-- wrk report hook: one machine-readable line of counts and latency
-- percentiles (milliseconds), for the bench scripts to parse.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk-summary requests=%d errors=%d non2xx=%d p50=%.2f p95=%.2f p99=%.2f max=%.2f\n",
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
