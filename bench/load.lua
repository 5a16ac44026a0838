-- Closed loop: every connection sends its next request as soon as the last was answered.
-- wrk -s load.lua URL -- RUN CHATS SHAPE OUT
--   RUN   prefix of every id (ids are RUN-<thread>-<n>, unique across threads)
--   CHATS how many chats the messages are spread over
--   SHAPE message | livechat | outcome (see common.lua)
--   OUT   where done() writes wrk's figures as JSON
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

local run, chats, shape, prefix
n = 0 -- global: done() reads it from each thread

function init(args)
   run, chats, shape = args[1], tonumber(args[2]), args[3]
   prefix = run .. "-" .. tid .. "-"
   out = args[4]
end

function request()
   n = n + 1
   local ext = prefix .. n
   return wrk.format("POST", nil, common.headers, common.body(shape, ext, (n * 7 + tid) % chats))
end

function done(summary, latency, requests)
   -- wrk calls request() once on thread 0's state to check the script before any connection
   -- is made (script_verify_request): that id is never sent.
   local issued = -1
   for _, t in ipairs(threads) do
      issued = issued + t:get("n")
   end
   local e = summary.errors
   common.write_json(threads[1]:get("out"), {
      duration_s = summary.duration / 1e6,
      completed = summary.requests,
      issued = issued,
      connect_errors = e.connect,
      read_errors = e.read,
      write_errors = e.write,
      status_errors = e.status,
      timeouts = e.timeout,
      latency_p50_ms = latency:percentile(50) / 1000,
      latency_p99_ms = latency:percentile(99) / 1000,
      latency_max_ms = latency.max / 1000,
   })
end
