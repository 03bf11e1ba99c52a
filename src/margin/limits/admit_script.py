"""The Lua script that admits one request in Redis: its rate limits and its budget
reservations checked and charged in one atomic step (``margin.limits.admission``)."""

# KEYS: per rate limit a sorted set (member: request id, score: ms) and a hash of weights
# (tokens only: member -> weight, "_t" -> total); then per budget a hash {s: spent,
# r: reserved, "h:<rid>": amount} and a sorted set of holds scored by expiry (s); last, the
# epoch key. ARGV: window ms, rid, number of limits, hold ttl s; per limit: limit, cost,
# weighted (0/1); per budget: limit, amount, baseline, expire_at (unix s), force (0/1);
# last, the epoch this replica knows. Amounts are integer nano-dollars (or requests).
# Replies {-1} when the epoch differs (Redis lost its state, or another replica rebuilt
# it) and {-2, j} when budget j has no spent counter (to be rebuilt from the ledger), both
# before anything is charged.
ADMIT_LUA = """
if redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then return {-1} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = now_ms / 1000
local window, rid = tonumber(ARGV[1]), ARGV[2]
local nl, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local cutoff = now_ms - window
local totals, rdenied, retry = {}, 0, 0
for i = 1, nl do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + 3 * (i - 1)
  local limit, cost, weighted = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  local total
  if weighted then
    total = tonumber(redis.call('HGET', h, '_t') or '0')
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
    if #old > 0 then
      for j = 1, #old do total = total - tonumber(redis.call('HGET', h, old[j]) or '0') end
      for j = 1, #old, 1000 do
        redis.call('HDEL', h, unpack(old, j, math.min(j + 999, #old)))
      end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
      if total < 0 then total = 0 end
      redis.call('HSET', h, '_t', total)
    end
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    total = redis.call('ZCARD', z)
  end
  totals[i] = total
  if total + cost > limit then
    local wait = window
    if cost <= limit then
      local need = total + cost - limit
      if weighted then
        local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
        local freed = 0
        for j = 1, #entries, 2 do
          freed = freed + tonumber(redis.call('HGET', h, entries[j]) or '0')
          if freed >= need then wait = tonumber(entries[j + 1]) + window - now_ms; break end
        end
      else
        local e = redis.call('ZRANGE', z, need - 1, need - 1, 'WITHSCORES')
        if #e == 2 then wait = tonumber(e[2]) + window - now_ms end
      end
    end
    if rdenied == 0 or wait > retry then rdenied = i; retry = wait end
  end
end
local nb = (#KEYS - 1 - 2 * nl) / 2
local spent, reserved, bdenied = {}, {}, 0
if rdenied == 0 then
  for j = 1, nb do
    if redis.call('HEXISTS', KEYS[2 * nl + 2 * j - 1], 's') == 0 then return {-2, j} end
  end
  for j = 1, nb do
    local h, z = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
    local a = 4 + 3 * nl + 5 * (j - 1)
    local limit, amount = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local v = redis.call('HMGET', h, 's', 'r')
    spent[j], reserved[j] = tonumber(v[1]), tonumber(v[2] or '0')
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now_s)
    if #old > 0 then
      for k = 1, #old do
        local held = redis.call('HGET', h, 'h:' .. old[k])
        if held then
          redis.call('HINCRBY', h, 'r', -tonumber(held))
          redis.call('HDEL', h, 'h:' .. old[k])
          reserved[j] = reserved[j] - tonumber(held)
        end
      end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now_s)
    end
    if bdenied == 0 and ARGV[a + 5] ~= '1' and spent[j] + reserved[j] + amount > limit then
      bdenied = j
    end
  end
end
local ok = rdenied == 0 and bdenied == 0
local out = {rdenied, tostring(retry), bdenied}
for i = 1, nl do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + 3 * (i - 1)
  local cost = tonumber(ARGV[a + 2])
  local reset = 0
  if ok and cost > 0 then
    redis.call('ZADD', z, now_ms, rid)
    redis.call('PEXPIRE', z, window + 1000)
    totals[i] = totals[i] + cost
    if ARGV[a + 3] == '1' then
      redis.call('HSET', h, rid, cost, '_t', totals[i])
      redis.call('PEXPIRE', h, window + 1000)
    end
    reset = window
  else
    local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    if #newest == 2 then reset = tonumber(newest[2]) + window - now_ms end
  end
  out[#out + 1] = totals[i]
  out[#out + 1] = tostring(reset)
end
if rdenied == 0 then
  for j = 1, nb do
    local h, z = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
    local a = 4 + 3 * nl + 5 * (j - 1)
    local amount = tonumber(ARGV[a + 2])
    if ok and amount > 0 then
      reserved[j] = reserved[j] + amount
      redis.call('HSET', h, 'r', reserved[j], 'h:' .. rid, amount)
      redis.call('ZADD', z, now_s + ttl, rid)
      redis.call('EXPIREAT', z, ARGV[a + 4])
    end
    out[#out + 1] = spent[j]  -- integers: exact as integer replies (tostring rounds)
    out[#out + 1] = reserved[j]
  end
end
return out
"""
