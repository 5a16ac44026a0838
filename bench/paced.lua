-- Open loop at a fixed offered rate: request k of the run is due at START + k / RATE, whether or
-- not earlier ones were answered. Run with as many threads as connections (wrk -tN -cN): each
-- thread then owns one connection, so each response is known to answer the request that thread
-- sent last, and its latency is measured from when that request was due (a late send, because
-- the connection still waited for its previous answer, counts against the subject: no
-- coordinated omission). Thread j sends requests j, j+N, j+2N, ...
-- wrk -s paced.lua URL -- RUN CHATS RATE START SECONDS THREADS OUT
--   START  wall-clock second at which request 0 is due; SECONDS: how long requests are offered
--   OUT    done() writes one line per answered request: id due ready sent answered status, the
--          times in wall-clock seconds (ready: when the connection became free for it)
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local common = dofile(here .. "common.lua")

local threads = {}
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   common.spread(thread, next_tid)
   next_tid = next_tid + 1
   threads[#threads + 1] = thread
end

local run, chats, rate, start, total, nthreads, prefix
local k = 0 -- this thread's next request: number k * nthreads + tid of the run
local due, ext, sent, ready
local armed = false -- delay() ran: the next request() is a real one
lines = {} -- global: done() collects them from each thread
issued = 0

local function due_at(i)
   return start + (i * nthreads + tid) / rate
end

function init(args)
   run, chats, rate, start = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
   total = math.floor(tonumber(args[5]) * rate)
   nthreads = tonumber(args[6])
   out = args[7]
   prefix = run .. "-" .. tid .. "-"
end

-- Called before each request on the connection, the first one included.
function delay()
   if k * nthreads + tid >= total then
      return 3600 * 1000 -- done: idle until wrk's duration ends
   end
   armed = true
   ready = common.now() -- the connection is free: the previous answer is in
   local wait = due_at(k) - ready
   return wait > 0 and math.ceil(wait * 1000) or 0
end

function request()
   if not armed then
      -- wrk calls request() once on thread 0's state to check the script before any
      -- connection is made (script_verify_request): that body is never sent.
      return wrk.format("POST", nil, common.headers, common.body("message", "verify", 0))
   end
   armed = false
   due = due_at(k)
   ext = prefix .. k
   k = k + 1
   issued = k
   sent = common.now()
   local chat = (k * nthreads + tid) % chats
   return wrk.format("POST", nil, common.headers, common.body("message", ext, chat))
end

function response(status, headers, body)
   lines[#lines + 1] =
      string.format("%s %.6f %.6f %.6f %.6f %d", ext, due, ready, sent, common.now(), status)
end

function done(summary, latency, requests)
   local f = assert(io.open(threads[1]:get("out"), "w"))
   local issued_all = 0
   for _, t in ipairs(threads) do
      issued_all = issued_all + t:get("issued")
      for _, line in ipairs(t:get("lines")) do
         f:write(line, "\n")
      end
   end
   f:write(string.format("# issued %d\n", issued_all))
   f:close()
end
