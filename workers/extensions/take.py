"""Taking a message and recording it are one step: nothing is lost between the two.

kombu's Redis channel takes a message with ``BRPOP`` and then, in a second
command, records it as unacknowledged (and taskyard's in-flight ledger with
it). A Redis that fails between the two — a master killed before it
replicated the record, a restart — leaves the message popped and recorded
nowhere: lost. Here one Lua script (:data:`TAKE`) pops the first message of
the node's queues (in kombu's order: priorities, then the queue cycle) and
records it in kombu's ``unacked`` hash and ``unacked_index``, the ledger
(owner, host, task) and reads what the node must know before it runs it
(cancelled? retried since? finished?), in one atomic step that Redis also
replicates as one (a script's effects travel as one ``MULTI``/``EXEC``).
A replica promoted after it has the message either queued or held by its
node, never neither.

A script cannot block, so a node with nothing to take waits on **bells**:
``taskyard:bell:<list>``, one short list per queue list, into which every
publish through a taskyard app (a cast, a batch, the mover, a message put
back) pushes one token (:func:`ring`). The node blocks on its bells with
``BLPOP`` (``brpop_timeout``, 1 s), and takes again when one rings or the
wait ends. ``BLPOP`` hands each token to one waiting node, so a message wakes
one node, not every node of its queue; a message published without a bell
(by a plain Celery or ``celery-node`` caller) is taken at the next take of
any node: at once on a busy node, within ``brpop_timeout`` on an idle one.
The script drops one token for each message it takes, so a bell is never
longer than its queue (a batch adds at most :data:`BELL_MAX` tokens).

A message the script cannot read as kombu's envelope (a poison entry), or
larger than ``max_message_bytes``, is not recorded: it is returned as it is
and dead-lettered by the channel, as before.
"""

from __future__ import annotations

from typing import Any

from workers.core.keys import BELL_MAX, bell_key

#: What a bell's token is (any value would do).
BELL_TOKEN = "1"


def ring(pipe: Any, list_key: str, messages: int = 1) -> None:
    """Add to ``pipe`` the command that rings ``list_key``'s bell for ``messages`` more.

    One token per message (at most :data:`BELL_MAX` at once: as many nodes as one
    burst may wake); each take drops one, so a bell is never longer than its list.
    """
    pipe.lpush(bell_key(list_key), *[BELL_TOKEN] * max(1, min(messages, BELL_MAX)))


#: KEYS: unacked hash, unacked index, ledger owners, ledger tasks, ledger hosts.
#: ARGV: host, pid, ledger-per-host prefix, bell prefix, revoked prefix, attempts prefix,
#: result prefix ("" to not read results), max bytes, n, then n lists in the order to take.
#: Returns nil, or {list, entry, recorded (1/0), revoked, redelivered (1/0), attempt, result}.
TAKE = """
local n = tonumber(ARGV[9])
for i = 1, n do
  local list = ARGV[9 + i]
  local entry = redis.call('RPOP', list)
  if entry then
    local ok, m = false, nil
    if string.len(entry) <= tonumber(ARGV[8]) then ok, m = pcall(cjson.decode, entry) end
    if not (ok and type(m) == 'table' and m['body'] ~= nil and type(m['headers']) == 'table'
            and type(m['properties']) == 'table'
            and type(m['properties']['delivery_tag']) == 'string') then
      return {list, entry, 0, false, 0, false, false}
    end
    local props = m['properties']
    local info = props['delivery_info']
    if type(info) ~= 'table' then info = {} end
    local tag = props['delivery_tag']
    local task = m['headers']['id']
    if type(task) ~= 'string' then task = '' end
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    local exchange, routing = info['exchange'], info['routing_key']
    if type(exchange) ~= 'string' then exchange = '' end
    if type(routing) ~= 'string' then routing = '' end
    redis.call('ZADD', KEYS[2], now, tag)
    redis.call('HSET', KEYS[1], tag,
               '[' .. entry .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing) .. ']')
    local host = ARGV[1]
    if host ~= '' then
      redis.call('HSET', KEYS[3], tag, host)
      redis.call('HSET', ARGV[3] .. host, tag, task)
      if task ~= '' then
        redis.call('HSET', KEYS[4], task, '{"host":' .. cjson.encode(host) .. ',"pid":' .. ARGV[2]
                   .. ',"at":' .. string.format('%.3f', now) .. '}')
      end
      redis.call('SADD', KEYS[5], host)
    end
    redis.call('LPOP', ARGV[4] .. list)
    local revoked, attempt, result = false, false, false
    local redelivered = 0
    if info['redelivered'] == true or m['headers']['redelivered'] == true then
      redelivered = 1
    end
    if task ~= '' then
      revoked = redis.call('GET', ARGV[5] .. task)
      if redelivered == 1 then
        attempt = redis.call('HGET', ARGV[6] .. task, 'attempt')
        if ARGV[7] ~= '' then result = redis.call('GET', ARGV[7] .. task) end
      end
    end
    return {list, entry, 1, revoked, redelivered, attempt, result}
  end
end
return nil
"""
