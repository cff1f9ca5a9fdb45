-- wrk script for `python -m bench e2e`: every request carries a bearer token, the tokens of the
-- file named by the first script argument in turn (one per line), and the summary is printed as
-- one JSON line for the suite to read.
--   wrk -t1 -cN -dS --latency -s tokens.lua URL -- TOKENS_FILE
-- The requests are formatted once per thread (init), so the per-request cost is a table lookup.

local requests = {}
local turn = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format(nil, nil, { Authorization = "Bearer " .. line })
    end
  end
  assert(#requests > 0, "no token in " .. tostring(args[1]))
end

function request()
  turn = turn % #requests + 1
  return requests[turn]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
