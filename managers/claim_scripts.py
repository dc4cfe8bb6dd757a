"""The Lua scripts of :mod:`managers.claims`: each a step that must be atomic.

Every claim, release and inventory report changes a host's usage and its
place in the index of free capacity together, in one script, so that no two
placements can take the same units and the index never says more is free
than claims left. Key names are built from the prefix ``ARGV[1]``
(``taskyard:placement:<service>``) inside the scripts.
"""

from __future__ import annotations

# Inventory report. ARGV: prefix, host, zone, JSON document, listed ('1': in the index),
# classes (comma-separated), then class, capacity pairs.
REPORT = """
local p, host, zone, listed = ARGV[1], ARGV[2], ARGV[3], ARGV[5] == '1'
local oldzone = redis.call('HGET', p..':zone', host) or ''
local old = redis.call('HGET', p..':classes', host) or ''
local new = {}
for i = 7, #ARGV, 2 do new[ARGV[i]] = true end
for rc in string.gmatch(old, '[^,]+') do
  if not new[rc] then
    redis.call('HDEL', p..':capacity:'..rc, host)
    redis.call('ZREM', p..':free:'..rc, host)
    if oldzone ~= '' then redis.call('ZREM', p..':free:'..rc..':zone:'..oldzone, host) end
  end
end
redis.call('HSET', p..':inventory', host, ARGV[4])
redis.call('HSET', p..':zone', host, zone)
redis.call('HSET', p..':classes', host, ARGV[6])
for i = 7, #ARGV, 2 do
  local rc, cap = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', p..':capacity:'..rc, host, cap)
  local free = cap - tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
  if oldzone ~= '' and oldzone ~= zone then
    redis.call('ZREM', p..':free:'..rc..':zone:'..oldzone, host)
  end
  if listed then
    redis.call('ZADD', p..':free:'..rc, free, host)
    if zone ~= '' then redis.call('ZADD', p..':free:'..rc..':zone:'..zone, free, host) end
  else
    redis.call('ZREM', p..':free:'..rc, host)
    if zone ~= '' then redis.call('ZREM', p..':free:'..rc..':zone:'..zone, host) end
  end
end
return 1
"""

# Keeps the index right after usage:<rc> of a host changed (members only: XX).
REINDEX = """
local function reindex(p, rc, host, used, zone)
  local cap = redis.call('HGET', p..':capacity:'..rc, host)
  if cap then
    local free = tonumber(cap) - used
    redis.call('ZADD', p..':free:'..rc, 'XX', free, host)
    if zone and zone ~= '' then
      redis.call('ZADD', p..':free:'..rc..':zone:'..zone, 'XX', free, host)
    end
  end
end
"""

# Claim. KEYS: claim, claims:<host>, and optionally a record to write with it and a sorted
# set to add the id to. ARGV: prefix, id, host, force ('1': no capacity check), now, the
# number n of record arguments, n record field/value arguments, then class, amount pairs.
# Returns {1, host, new} or {0, why, ...}.
CLAIM = REINDEX + """
local p, id, host, force = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local first = 7 + tonumber(ARGV[6])
local holder = redis.call('HGET', KEYS[1], 'host')
if holder then
  if holder == host then return {1, host, 0} end
  return {0, 'held', holder}
end
if not force then
  for i = first, #ARGV, 2 do
    local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
    if amount > 0 then
      local cap = redis.call('HGET', p..':capacity:'..rc, host)
      local used = tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
      if not cap then return {0, 'noinv', rc, tostring(used), '0'} end
      if used + amount > tonumber(cap) then return {0, 'full', rc, tostring(used), cap} end
    end
  end
end
local zone = redis.call('HGET', p..':zone', host)
redis.call('HSET', KEYS[1], 'host', host, 'at', ARGV[5])
for i = first, #ARGV, 2 do
  local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[1], 'rc:'..rc, amount)
  reindex(p, rc, host, redis.call('HINCRBY', p..':usage:'..rc, host, amount), zone)
end
redis.call('SADD', KEYS[2], id)
if #KEYS == 4 then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], unpack(ARGV, 7, first - 1))
  redis.call('ZADD', KEYS[4], ARGV[5], id)
end
return {1, host, 1}
"""

# Resize a claim in place. KEYS: claim. ARGV: prefix, id, host, force, then class, amount
# pairs. Returns {1} or {0, why, ...} as CLAIM does.
RESIZE = REINDEX + """
local p, id, host, force = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local holder = redis.call('HGET', KEYS[1], 'host')
if holder ~= host then return {0, 'held', holder or ''} end
if not force then
  for i = 5, #ARGV, 2 do
    local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
    local delta = amount - tonumber(redis.call('HGET', KEYS[1], 'rc:'..rc) or '0')
    if delta > 0 then
      local cap = redis.call('HGET', p..':capacity:'..rc, host)
      local used = tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
      if not cap then return {0, 'noinv', rc, tostring(used), '0'} end
      if used + delta > tonumber(cap) then return {0, 'full', rc, tostring(used), cap} end
    end
  end
end
local zone = redis.call('HGET', p..':zone', host)
for i = 5, #ARGV, 2 do
  local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
  local delta = amount - tonumber(redis.call('HGET', KEYS[1], 'rc:'..rc) or '0')
  redis.call('HSET', KEYS[1], 'rc:'..rc, amount)
  reindex(p, rc, host, redis.call('HINCRBY', p..':usage:'..rc, host, delta), zone)
end
return {1}
"""

# Release. KEYS: claim. ARGV: prefix, id, host it must be on ('' : any). Returns the host
# it was on, or false.
RELEASE = REINDEX + """
local p, id = ARGV[1], ARGV[2]
local host = redis.call('HGET', KEYS[1], 'host')
if not host or (ARGV[3] ~= '' and ARGV[3] ~= host) then return false end
local zone = redis.call('HGET', p..':zone', host)
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 3) == 'rc:' then
    local rc = string.sub(fields[i], 4)
    local amount = 0 - tonumber(fields[i + 1])  -- never -0, which HINCRBY refuses
    reindex(p, rc, host, redis.call('HINCRBY', p..':usage:'..rc, host, amount), zone)
  end
end
redis.call('SREM', p..':claims:'..host, id)
redis.call('DEL', KEYS[1])
return host
"""

# Usage of a host counted again from its claims. ARGV: prefix, host. Returns
# {class, usage before, usage now, ...} for every class whose usage changed.
RECOUNT = REINDEX + """
local p, host = ARGV[1], ARGV[2]
local sums = {}
for _, id in ipairs(redis.call('SMEMBERS', p..':claims:'..host)) do
  local fields = redis.call('HGETALL', p..':claim:'..id)
  if #fields == 0 then redis.call('SREM', p..':claims:'..host, id) end
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 3) == 'rc:' then
      local rc = string.sub(fields[i], 4)
      sums[rc] = (sums[rc] or 0) + tonumber(fields[i + 1])
    end
  end
end
local classes = redis.call('HGET', p..':classes', host) or ''
for rc in string.gmatch(classes, '[^,]+') do sums[rc] = sums[rc] or 0 end
local zone = redis.call('HGET', p..':zone', host)
local changed = {}
for rc, sum in pairs(sums) do
  local before = tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
  if before ~= sum then
    redis.call('HSET', p..':usage:'..rc, host, sum)
    reindex(p, rc, host, sum, zone)
    table.insert(changed, rc)
    table.insert(changed, tostring(before))
    table.insert(changed, tostring(sum))
  end
end
return changed
"""

# The freest hosts of an index, with their zone, failures, what is free of the other
# classes, and their fields in other hashes keyed by host. KEYS: the index, then those
# hashes. ARGV: prefix, limit, other classes... Returns {hosts, scores, zones, failures,
# {seconds, microseconds} of the server's clock, a list per hash, a list per class}.
CANDIDATES = """
local p = ARGV[1]
local found = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local hosts, scores = {}, {}
for i = 1, #found, 2 do
  table.insert(hosts, found[i])
  table.insert(scores, found[i + 1])
end
local out = {hosts, scores, {}, {}, redis.call('TIME')}
if #hosts == 0 then return out end
out[3] = redis.call('HMGET', p..':zone', unpack(hosts))
out[4] = redis.call('HMGET', p..':failures', unpack(hosts))
for i = 2, #KEYS do table.insert(out, redis.call('HMGET', KEYS[i], unpack(hosts))) end
for i = 3, #ARGV do
  table.insert(out, redis.call('ZMSCORE', p..':free:'..ARGV[i], unpack(hosts)))
end
return out
"""
