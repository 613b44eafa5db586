-- wrk script: POST a signup's JSON body with a username no other request uses.
-- Environment: BENCH_PREFIX (unique per run) and BENCH_API_KEY.
-- Prints one line "BENCH_RESULT {json}" with the counts and latency percentiles (microseconds).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  prefix = os.getenv("BENCH_PREFIX") .. "t" .. thread_number .. "n"
  sent = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
end

function request()
  sent = sent + 1
  local username = prefix .. sent
  local body = string.format(
    '{"username": "%s", "email": "%s@example.com", "first_name": "Bench", "last_name": "User"}',
    username, username)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "p50": %d, ' ..
    '"p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency.mean, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max))
end
