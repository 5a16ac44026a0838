-- Shared by load.lua and paced.lua (loaded with dofile; wrk's Lua is LuaJIT 2.1, one state per
-- thread plus one for setup/done). Bodies are built per request so that every request is a
-- distinct message: a distinct id, spread over `chats` chats.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")

local M = {}

-- Wall-clock seconds (CLOCK_REALTIME): the sinks stamp arrivals with Python's time.time().
function M.now()
   ffi.C.clock_gettime(0, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local CODE = "bench-confirmation-code"

-- The JSON body of request number `n` of shape `shape`, whose id is `ext`.
-- message: the messenger's webhook (the subjects); livechat: what the bridge posts to the live
-- chat; outcome: the messageOutcome it posts to the messenger (both only to measure the sinks).
function M.body(shape, ext, chat)
   if shape == "livechat" then
      return '{"id":"' .. ext .. '","text":"' .. ext .. '","sender":{"type":"customer"}}'
   elseif shape == "outcome" then
      return '{"type":"messageOutcome","token":"' .. CODE .. '","data":{"messageId":"' .. ext
         .. '","success":true}}'
   end
   return '{"type":"message","token":"' .. CODE .. '","data":{"externalMessageId":"' .. ext
      .. '","externalChatId":"chat-' .. chat .. '","externalUserId":"user-' .. chat
      .. '","text":"' .. ext .. '"}}'
end

-- In setup(thread): with BENCH_WRK_ADDRS = "host:port,host:port,...", thread number `tid`
-- connects to the (tid mod n)-th address instead of the URL's, so that the connections are
-- spread round-robin over several replicas with no proxy between (as a layer-4 load balancer
-- spreads connections). Without it, every thread connects to the URL's address.
function M.spread(thread, tid)
   local list = os.getenv("BENCH_WRK_ADDRS")
   if list == nil or list == "" then
      return
   end
   local addrs = {}
   for host, port in list:gmatch("([^,]+):(%d+)") do
      addrs[#addrs + 1] = { host, port }
   end
   local pick = addrs[tid % #addrs + 1]
   thread.addr = wrk.lookup(pick[1], pick[2])[1]
end

M.headers = { ["Content-Type"] = "application/json" }

-- A flat JSON object of numbers, for done() to hand its figures to the Python side.
function M.write_json(path, fields)
   local parts = {}
   for k, v in pairs(fields) do
      parts[#parts + 1] = string.format('"%s":%.17g', k, v)
   end
   local f = assert(io.open(path, "w"))
   f:write("{" .. table.concat(parts, ",") .. "}\n")
   f:close()
end

return M
