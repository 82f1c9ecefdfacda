-- wrk script: every request is a NEW signed webhook.
--
-- Each request fills the body template (BENCH_TEMPLATE, compact JSON with __ID__ placeholders)
-- with an id unique to this run, thread and request (BENCH_PREFIX-thread-counter), and signs it
-- like the `hmac` provider expects: `X-Signature: sha256=<hex HMAC-SHA256(BENCH_SECRET, body)>`.
-- The HMAC is computed by OpenSSL's libcrypto (which wrk links) through LuaJIT's FFI: about a
-- microsecond per request, so ids never repeat (no duplicates for the dedupe to absorb) and no
-- file of pre-signed bodies is needed. At the end, one line `BENCHJSON {...}` gives the totals
-- and the latency percentiles (microseconds) for bench/run.py to parse.

local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
]]

local C = ffi.C
local digest = ffi.new("unsigned char[32]")
local digest_len = ffi.new("unsigned int[1]")
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end

local function sign(key, data)
  C.HMAC(C.EVP_sha256(), key, #key, data, #data, digest, digest_len)
  local out = {}
  for i = 0, 31 do out[i + 1] = hex[digest[i]] end
  return table.concat(out)
end

local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local secret, prefix, template, path
local counter = 0

function init(args)
  secret = assert(os.getenv("BENCH_SECRET"), "BENCH_SECRET unset")
  prefix = assert(os.getenv("BENCH_PREFIX"), "BENCH_PREFIX unset") .. "-" .. tostring(tid)
  template = read_file(assert(os.getenv("BENCH_TEMPLATE"), "BENCH_TEMPLATE unset"))
  path = assert(os.getenv("BENCH_PATH"), "BENCH_PATH unset")
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local body = template:gsub("__ID__", id)
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Signature"] = "sha256=" .. sign(secret, body),
  }
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
