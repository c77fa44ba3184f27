-- wrk script: POST one MCP JSON-RPC message per request over Streamable HTTP and print a
-- machine-readable summary line ("WRK_JSON {...}") when done. Used by benchmarks/run.py.
--
-- Environment (all optional; without them: tools/call echo {"text": "hi"}, the same every time):
--   MCP_BODY           the JSON-RPC text; "{id}" becomes 1, "{n}" a counter (the vary workload)
--   MCP_COUNTER_START  the counter's first value (default 1)
--   MCP_TOKENS_FILE    bearer tokens, one a line: sent as Authorization: Bearer, rotated per request
-- The request is built once (static) unless the body has "{n}" or there are several tokens; then
-- request() builds each one with wrk.format.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"

local body = os.getenv("MCP_BODY")
  or '{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
body = body:gsub("{id}", "1")

local tokens = {}
local tokens_file = os.getenv("MCP_TOKENS_FILE")
if tokens_file and tokens_file ~= "" then
  for line in io.lines(tokens_file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
end
if #tokens > 0 then wrk.headers["Authorization"] = "Bearer " .. tokens[1] end

local at = body:find("{n}", 1, true)
if at or #tokens > 1 then
  local prefix = at and body:sub(1, at - 1) or body
  local suffix = at and body:sub(at + 3) or ""
  local counter = tonumber(os.getenv("MCP_COUNTER_START") or "1")
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  function request()
    local b = prefix
    if at then b = prefix .. string.format("%d", counter) .. suffix end
    if #tokens > 1 then headers["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1] end
    counter = counter + 1
    return wrk.format(nil, nil, headers, b)
  end
else
  wrk.body = body
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
