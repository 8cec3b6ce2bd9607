//! The Lua scripts of the Redis coordination: each one step that checks
//! and writes together, so two workers never interleave between a check and
//! its write. Hashed once, sent by SHA, loaded again when Redis forgot them.

use redis::Script;

// Takes up to ARGV[3] free shards among the candidates, in their order.
// KEYS: lease, fence of each candidate (on a Redis Cluster, one candidate:
// a shard's keys share a slot, two shards' need not). ARGV: owner, ttl_ms,
// want. Returns {candidate (1-based), fence, …} of those taken.
const ACQUIRE: &str = r#"
local out = {}
local want = tonumber(ARGV[3])
for i = 1, #KEYS, 2 do
  if want <= 0 then break end
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local f = redis.call('INCR', KEYS[i + 1])
    redis.call('SET', KEYS[i], ARGV[1] .. ':' .. f, 'PX', ARGV[2])
    out[#out + 1] = (i + 1) / 2
    out[#out + 1] = f
    want = want - 1
  end
end
return out
"#;

// Renews held leases, each as one step: held (the TTL starts again) = 1;
// lapsed or lost by Redis and nobody took it since = 2 (reclaimed with the
// same fence, the cursor written back if missing); another holder = 0.
// A renewed shard's status hash is written when asked (it changed).
// KEYS: lease, fence, cursor, status of each shard (on a Redis Cluster,
// one shard). ARGV: owner, ttl_ms, status_ttl_ms, then per shard: fence,
// cursor_ms or '', write status ('1'/'0'), last_error, per_minute,
// poll_interval_ms. Returns the codes, in order.
const RENEW: &str = r#"
local owner, ttl, sttl = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, 3 + i * 6
  local fence, cursor = ARGV[a + 1], ARGV[a + 2]
  local want = owner .. ':' .. fence
  local v = redis.call('GET', KEYS[k + 1])
  local code = 0
  if v == want then
    redis.call('PEXPIRE', KEYS[k + 1], ttl)
    code = 1
  elseif not v then
    local cur = redis.call('GET', KEYS[k + 2])
    if (not cur) or cur == fence then
      if not cur then redis.call('SET', KEYS[k + 2], fence) end
      redis.call('SET', KEYS[k + 1], want, 'PX', ttl)
      if cursor ~= '' and redis.call('EXISTS', KEYS[k + 3]) == 0 then redis.call('SET', KEYS[k + 3], cursor) end
      code = 2
    end
  end
  if code > 0 and ARGV[a + 3] == '1' then
    redis.call('HSET', KEYS[k + 4], 'owner', owner, 'fence', fence, 'last_error', ARGV[a + 4],
      'per_minute', ARGV[a + 5], 'poll_interval_ms', ARGV[a + 6])
    redis.call('PEXPIRE', KEYS[k + 4], sttl)
  end
  out[i + 1] = code
end
return out
"#;

// A fenced write: the cursor (then KEYS[4], the progress, is deleted) or
// the progress (KEYS[4] is the same key and ARGV[5] is '0').
// KEYS: lease, fence, target, progress. ARGV: owner, fence, ttl_ms, value,
// delete-progress ('1' or '0').
// {1, fence} = written, {2, fence} = written after restoring a lost lease,
// {0, current fence} = refused.
const CHECKPOINT: &str = r#"
local want = ARGV[1] .. ':' .. ARGV[2]
local v = redis.call('GET', KEYS[1])
local cur = redis.call('GET', KEYS[2])
local function write()
  redis.call('SET', KEYS[3], ARGV[4])
  if ARGV[5] == '1' then redis.call('DEL', KEYS[4]) end
end
if v == want and cur == ARGV[2] then
  write()
  return {1, tonumber(cur)}
end
if (not v) and ((not cur) or cur == ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[1], want, 'PX', ARGV[3])
  write()
  return {2, tonumber(ARGV[2])}
end
return {0, tonumber(cur or '0')}
"#;

// An operator's command takes a shard: the lease unless it is held (or
// anyway with ARGV[3] = '1'), with a new fence, so a holder it displaced can
// no longer write. KEYS: lease, fence. ARGV: owner, ttl_ms, force.
// {fence, previous holder or ''} = taken; {0, holder} = held, refused.
const SEIZE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and ARGV[3] ~= '1' then return {0, v} end
local f = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. f, 'PX', ARGV[2])
return {f, v or ''}
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

// KEYS: workers. ARGV: worker, ttl_ms. Returns live workers.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"#;

// KEYS: minute, day, pause, seq, last grant, waiters. ARGV: per_minute,
// per_day, minute_ms, day_ms, mode, pace_ms, worker, rank, stale_ms.
// Returns {1, the grant's number} for a permit or {0, ms to wait}. The
// number only grows (KEYS[4] never expires), unless the store lost it. Grants are paced
// `pace_ms` apart, so a backlog spends the minute evenly instead of in one
// burst whose requests reach the API spread over an unknown delay.
//
// Priority across the fleet: `waiters` holds, per worker, the rank of the
// request at the head of its queue and when it last asked ("rank:ms"). A
// caller is refused while another worker has a more urgent head that asked
// within `stale_ms`; a refused caller records its own head; a granted one
// removes it (its next head records itself when it asks).
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, rank, stale = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local function refuse(ms)
  redis.call('HSET', KEYS[6], me, rank .. ':' .. now)
  redis.call('PEXPIRE', KEYS[6], stale * 4)
  return {0, ms}
end
local p = redis.call('PTTL', KEYS[3])
if p > 0 then return refuse(p) end
-- ARGV[10]: the highest grant number this worker was given; ARGV[11]: ms
-- since it was given. A store whose count is below it forgot grants (a
-- fail-over, a restart without persistence): the API counted them, so
-- every worker waits out what is left of their minute, once (the count
-- is set back up to it, so no other worker pauses again for the same).
local seen, since = tonumber(ARGV[10]), tonumber(ARGV[11])
if seen > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') < seen then
  redis.call('SET', KEYS[4], seen)
  local left = tonumber(ARGV[3]) - since
  if left > 0 then
    redis.call('SET', KEYS[3], '1', 'PX', left)
    return refuse(left)
  end
end
local w = redis.call('HGETALL', KEYS[6])
for i = 1, #w, 2 do
  if w[i] ~= me then
    local r, at = string.match(w[i + 1], '^(%d+):(%d+)$')
    if (not r) or now - tonumber(at) > stale then
      redis.call('HDEL', KEYS[6], w[i])
    elseif tonumber(r) < rank then
      return refuse(math.min(500, stale))
    end
  end
end
local pm, pd = tonumber(ARGV[1]), tonumber(ARGV[2])
local span, dspan = tonumber(ARGV[3]), tonumber(ARGV[4])
local pace = tonumber(ARGV[6])
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
if now - last < pace then return refuse(last + pace - now) end
if ARGV[5] == 'sliding' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dspan)
  local d = redis.call('ZCARD', KEYS[2])
  if d >= pd then
    local o = redis.call('ZRANGE', KEYS[2], d - pd, d - pd, 'WITHSCORES')
    return refuse(math.max(1, tonumber(o[2]) + dspan - now))
  end
  local m = redis.call('ZCARD', KEYS[1])
  if m >= pm then
    local o = redis.call('ZRANGE', KEYS[1], m - pm, m - pm, 'WITHSCORES')
    return refuse(math.max(1, tonumber(o[2]) + span - now))
  end
  local seq = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[1], now, seq)
  redis.call('ZADD', KEYS[2], now, seq)
  redis.call('PEXPIRE', KEYS[1], span)
  redis.call('PEXPIRE', KEYS[2], dspan)
  redis.call('SET', KEYS[5], now, 'PX', span)
  redis.call('HDEL', KEYS[6], me)
  return {1, seq}
end
local m = tonumber(redis.call('GET', KEYS[1]) or '0')
if m >= pm then return refuse(math.max(1, redis.call('PTTL', KEYS[1]))) end
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
if d >= pd then return refuse(math.max(1, redis.call('PTTL', KEYS[2]))) end
if m == 0 then redis.call('SET', KEYS[1], 1, 'PX', span) else redis.call('INCR', KEYS[1]) end
if d == 0 then redis.call('SET', KEYS[2], 1, 'PX', dspan) else redis.call('INCR', KEYS[2]) end
redis.call('SET', KEYS[5], now, 'PX', span)
redis.call('HDEL', KEYS[6], me)
return {1, redis.call('INCR', KEYS[4])}
"#;

// KEYS: minute, day. ARGV: minute_ms, day_ms, mode. Returns {minute, day}.
// KEYS: minute, day, pause. Returns {minute, day, pause ms left (≤ 0: none)}.
const USAGE: &str = r#"
local p = redis.call('PTTL', KEYS[3])
if ARGV[3] == 'sliding' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return {redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf'),
          redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[2]), '+inf'), p}
end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0'), p}
"#;

const PAUSE: &str = r#"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
"#;

pub struct Scripts {
    pub acquire: Script,
    pub renew: Script,
    pub checkpoint: Script,
    pub release: Script,
    pub seize: Script,
    pub heartbeat: Script,
    pub take: Script,
    pub usage: Script,
    pub pause: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            checkpoint: Script::new(CHECKPOINT),
            release: Script::new(RELEASE),
            seize: Script::new(SEIZE),
            heartbeat: Script::new(HEARTBEAT),
            take: Script::new(TAKE),
            usage: Script::new(USAGE),
            pause: Script::new(PAUSE),
        }
    }
}
