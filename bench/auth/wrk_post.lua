-- wrk script: POST /get-online-features with BATCH random user_ids per request, with an
-- `Authorization: Bearer $TOKEN` header when TOKEN is set (access control on).
-- A pool of pre-built bodies (fixed seed) is cycled; done() prints one JSON line.
local n = tonumber(os.getenv("BATCH") or "1")
local nent = tonumber(os.getenv("N_ENTITIES") or "100000")
local features = os.getenv("FEATURES_JSON")
local token = os.getenv("TOKEN") or ""
local bodies = {}
local i = 0
local headers = { ["Content-Type"] = "application/json" }
if token ~= "" then headers["Authorization"] = "Bearer " .. token end

function init(args)
  math.randomseed(12345)
  for b = 1, 200 do
    local ids = {}
    for k = 1, n do ids[k] = tostring(math.random(0, nent - 1)) end
    bodies[b] = '{"features":' .. features .. ',"entities":{"user_id":[' .. table.concat(ids, ",") .. ']}}'
  end
end

function request()
  i = i % 200 + 1
  return wrk.format("POST", "/get-online-features", headers, bodies[i])
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"non2xx":%d}\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, summary.errors.status))
end
