-- wrk script for bench/e2e.sh: POST a chat completion, streaming when the first script
-- argument is "stream"; prints one machine-readable E2E_RESULT line when the run is done. A
-- second argument, a number of milliseconds, makes each connection wait that long between two
-- requests (a fixed offered load, used by bench/cpu_per_call.sh).
local body_plain = '{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello from the load test"}]}'
local body_stream = '{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"Hello from the load test"}]}'

function init(args)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   -- The gateway ignores the caller's key (it calls DeepSeek with its own); one caller for all.
   wrk.headers["Authorization"] = "Bearer sk-e2e-caller"
   local pause = tonumber(args[2])
   if pause then
      -- wrk looks for `delay` after `init`: only defined when asked for.
      delay = function() return pause end
   end
   if args[1] == "stream" then
      wrk.body = body_stream
   else
      wrk.body = body_plain
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "E2E_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.status, e.timeout))
end
