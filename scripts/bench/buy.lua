-- wrk script: POST /buy with a JSON body; FT (env) chooses ft=true or ft=false.
-- At the end it prints one machine-readable line for scripts/bench/happy-path.sh:
--   RESULT requests=<n> non2xx=<n> socket_errors=<n> duration_us=<n> p50_us=<n> p99_us=<n>
local ft = os.getenv("FT") or "true"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local product = (counter % 11) + 1
  local body = string.format('{"product":"%d","user":"wrk-%d","ft":%s}', product, counter % 50, ft)
  return wrk.format(nil, "/buy", nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d non2xx=%d socket_errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
