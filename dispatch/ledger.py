"""The send ledger: one atomic step per send that checks idempotency, opt-outs and the caps and reserves,
and the durable record of each channel call's outcome.

A reservation is keyed by its send id (the plan item id, or `<plan_id>:<n>` for a fallback re-send):
- a send id the ledger already holds answers what an earlier attempt left: `sent` or `unknown` (its
  call was settled), or `in_doubt` (reserved, and its call may have been under way when the worker
  died): the dispatcher records the first two without calling, and calls an `in_doubt` one again only
  on a channel that dedupes by the send id;
- else the user's suppression list is checked (`opted_out`: an `opt_out` or `unsubscribed` later than
  any `opt_in`, for this channel or for all), then `pushplan.caps.FrequencyCap` — per channel per local
  day and per rolling week, per user per local day, the minimum gap, and the campaign total — against
  every send the user holds across campaigns; reserved only if all hold.
After the channel call, the send is settled: `sent` and `unknown` keep the reservation (it counts
against later caps), `release` forgets it (the call failed: it holds no cap, and a retry may reserve
again). The dispatcher settles each call in the same round trip as the next reservation, so a call's
outcome is durable before the next call starts.

Two implementations of one contract (tests/integration/test_ledger_contract.py runs the same suite on
both): `RedisLedger` in `production`, one Lua script per send, so the check and the reservation are
one step however many workers race; `SqlLedger` in `local`, the same rule in Python under a SQLite
write transaction (the plan store's engine begins every transaction IMMEDIATE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from pushplan.caps import WEEK, FrequencyCap
from pushplan.db.schema import CapLedgerRow, SuppressionRow
from pushplan.db.store import PlanStore
from pushplan.settings import Profile, Settings, per_settings


class Verdict(StrEnum):
    reserved = "reserved"
    # The send id is known: what an earlier attempt left.
    in_doubt = "in_doubt"  # reserved, never settled: its call may have delivered
    sent = "sent"
    unknown = "unknown"
    opted_out = "opted_out"  # on the user's suppression list for this channel
    # Capped, by the cap that refused (checked in this order):
    min_gap = "min_gap"
    per_user_day = "per_user_day"
    per_channel_day = "per_channel_day"
    per_channel_week = "per_channel_week"
    campaign_total = "campaign_total"

    @property
    def capped(self) -> bool:
        return self in CAPPED


CAPPED = frozenset(
    {
        Verdict.min_gap,
        Verdict.per_user_day,
        Verdict.per_channel_day,
        Verdict.per_channel_week,
        Verdict.campaign_total,
    }
)


class Settle(StrEnum):
    """What a send's channel call came to, as the ledger keeps it."""

    sent = "sent"
    unknown = "unknown"
    release = "release"  # the call failed (or was never made): forget the reservation


@dataclass(frozen=True)
class Reservation:
    send_id: str
    user_id: str
    campaign_id: str
    channel: str
    at: datetime  # aware: when the message goes out
    zone: str  # the user's IANA zone, which decides what a "day" is
    cap: FrequencyCap


@dataclass(frozen=True)
class Settlement:
    request: Reservation
    outcome: Settle


@dataclass(frozen=True)
class OptChange:
    """An opt-out (or opt-in) of one user, for one channel or for all (`channel` = ALL_CHANNELS)."""

    user_id: str
    channel: str
    at: datetime  # aware: when the user said it; a later change wins, whatever order they arrive in
    opted_out: bool


ALL_CHANNELS = "*"


class CapLedger(Protocol):
    def reserve(self, requests: Sequence[Reservation], settle: Sequence[Settlement] = ()) -> list[Verdict]:
        """Settle `settle` first, then one verdict per request, in order; each request is checked after
        those before it. One round trip (Redis) or one transaction (SQL) for all of it."""
        ...

    def settle(self, settlements: Sequence[Settlement]) -> None:
        """Record what these sends' calls came to (see `Settle`); only a `reserved` send is settled."""
        ...

    def outcomes(self, send_ids: Sequence[str]) -> dict[str, Verdict]:
        """What the ledger holds of these sends, for those it knows: `sent`, `unknown` or `in_doubt`."""
        ...

    def suppress(self, changes: Sequence[OptChange]) -> None:
        """Put users on (or take them off) the suppression list; the latest change per channel wins."""
        ...

    def release(self, requests: Sequence[Reservation]) -> None:
        """Forget these reservations: `settle` with `Settle.release`."""
        ...


def local_day_bounds(at: datetime, zone: str) -> tuple[datetime, datetime]:
    """The UTC instants where the user's local calendar day holding `at` begins and ends.

    Across a daylight-saving change a local day is 23 or 25 hours long; midnight itself is never
    skipped in the zones that change at 02:00 or 03:00, and where it would be, `fold` picks the
    instant a wall clock shows.
    """
    tz = ZoneInfo(zone)
    day = at.astimezone(tz).date()
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


# The Lua port of FrequencyCap.admits (pushplan/caps.py); the contract suite checks the two agree.
# KEYS: the user's sends (sorted set: member "send_id|channel", score epoch seconds), the send's
# idempotency key (value "<status> <member>", status reserved|sent|unknown), the campaign's sends (a
# set), the user's suppression list (hash: channel or "*" -> "<epoch seconds> <1 opted out|0 in>").
# Epoch seconds are floats; bounds follow admits: the gap is |t - at| < gap, a day is [start, end), a
# week window is (end - 7 days, end].
# Settling one send: `sent` and `unknown` keep its reservation, `release` forgets it.
SETTLE_FUNCTION = """
local function settle(user_key, send_key, campaign_key, send_id, outcome)
  local known = redis.call('GET', send_key)
  if not known then return 0 end
  local status, member = string.match(known, '^(%a+) (.*)$')
  if status ~= 'reserved' then return 0 end  -- an outcome, once known, is never overwritten
  if outcome == 'release' then
    redis.call('ZREM', user_key, member)
    redis.call('DEL', send_key)
    redis.call('SREM', campaign_key, send_id)
  else
    redis.call('SET', send_key, outcome .. ' ' .. member, 'KEEPTTL')
  end
  return 1
end
"""

# A suppression-list entry is "<epoch seconds> <1 opted out|0 in>"; `newer` is SqlLedger's `_newer`:
# a later change wins, and at a tie the opt-out.
OPT_FUNCTIONS = """
local function opt_entry(text)
  local t, flag = string.match(text, '^(%S+) (%d)$')
  return tonumber(t), flag == '1'
end
local function newer(t, out, than_t, than_out)
  return t > than_t or (t == than_t and out and not than_out)
end
"""

# ARGV: the send id, the channel, and the nine numbers in one space-separated string (one argument
# for redis-py to pack instead of nine: per send, that packing was most of the client's cost):
# the send's epoch seconds, its local day's start and end, the caps per channel per day and per week,
# per user per day, the minimum gap in seconds, the campaign total (-1: none), the retention.
# KEYS[5..7] and ARGV[4..5], when given: a previous send's keys, its id and outcome, settled first,
# so one call per send makes the last call's outcome durable before the next call starts.
RESERVE_LUA = (
    SETTLE_FUNCTION
    + OPT_FUNCTIONS
    + """
if #KEYS > 4 then settle(KEYS[5], KEYS[6], KEYS[7], ARGV[4], ARGV[5]) end
local user_key, send_key, campaign_key, optout_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local send_id, channel = ARGV[1], ARGV[2]
local n = {}
for x in string.gmatch(ARGV[3], '%S+') do n[#n + 1] = tonumber(x) end
local at, day_start, day_end = n[1], n[2], n[3]
local per_channel_day, per_channel_week, per_user_day, gap = n[4], n[5], n[6], n[7]
local total, ttl = n[8], n[9]
local week = 604800
-- Numbers as bounds keep all their digits (a Lua number turned into a string keeps only 14).
local function bound(x, open) return string.format(open and '(%.17g' or '%.17g', x) end
-- The latest of the channel's and the all-channels' entries decides.
local latest, out = -math.huge, false
for _, entry in ipairs(redis.call('HMGET', optout_key, channel, '*')) do
  if entry then
    local t, o = opt_entry(entry)
    if newer(t, o, latest, out) then latest, out = t, o end
  end
end
local known = redis.call('GET', send_key)
if known then
  local status, member = string.match(known, '^(%a+) (.*)$')
  if status ~= 'reserved' then return status end
  -- In doubt, and the user has opted out since: it may have gone before; it must not go again.
  if out then
    redis.call('SET', send_key, 'unknown ' .. member, 'KEEPTTL')
    return 'unknown'
  end
  return 'in_doubt'
end
if out then return 'opted_out' end
-- What no cap can need any more (older than the retention before this send) goes, so a user's set
-- holds at most the retention's sends however long they stay.
redis.call('ZREMRANGEBYSCORE', user_key, '-inf', bound(at - ttl, true))
if gap > 0 and redis.call('ZCOUNT', user_key, bound(at - gap, true), bound(at + gap, true)) > 0 then
  return 'min_gap'
end
local day = redis.call('ZRANGEBYSCORE', user_key, bound(day_start), bound(day_end, true))
if #day + 1 > per_user_day then return 'per_user_day' end
local suffix = '|' .. channel
local on_channel = 0
for _, member in ipairs(day) do
  if string.sub(member, -#suffix) == suffix then on_channel = on_channel + 1 end
end
if on_channel + 1 > per_channel_day then return 'per_channel_day' end
local near = redis.call(
  'ZRANGEBYSCORE', user_key, bound(at - week, true), bound(at + week, true), 'WITHSCORES')
local times = {at}
for i = 1, #near, 2 do
  if string.sub(near[i], -#suffix) == suffix then table.insert(times, tonumber(near[i + 1])) end
end
table.sort(times)
for _, window_end in ipairs(times) do
  if window_end >= at and window_end < at + week then
    local count = 0
    for _, t in ipairs(times) do
      if t > window_end - week and t <= window_end then count = count + 1 end
    end
    if count > per_channel_week then return 'per_channel_week' end
  end
end
if total >= 0 and redis.call('SCARD', campaign_key) + 1 > total then return 'campaign_total' end
redis.call('ZADD', user_key, string.format('%.17g', at), send_id .. suffix)
redis.call('EXPIRE', user_key, ttl)
redis.call('SET', send_key, 'reserved ' .. send_id .. suffix, 'EX', ttl)
if total >= 0 then  -- only a campaign with a total needs its sends counted
  redis.call('SADD', campaign_key, send_id)
  redis.call('EXPIRE', campaign_key, ttl)
end
return 'reserved'
"""
)

# KEYS: as RESERVE_LUA's first three; ARGV: the send id, and sent | unknown | release.
SETTLE_LUA = SETTLE_FUNCTION + "return settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])"

# KEYS: the user's suppression list; ARGV: the channel (or "*"), epoch seconds, 1 opted out | 0 in.
SUPPRESS_LUA = (
    OPT_FUNCTIONS
    + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry then
  local t, o = opt_entry(entry)
  if not newer(tonumber(ARGV[2]), ARGV[3] == '1', t, o) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 1
"""
)


class RedisLedger:
    """The ledger in Redis, one Lua script call per send; settlements ride in the same pipeline.

    The scripts touch keys of different hash slots, so on Redis Cluster they must share a hash tag;
    pushplan's keys are `{pushplan}:…`-free today because the production profile is one Redis. A
    reservation is kept for `RETENTION` (longer than the widest cap, a week either side), and Redis
    must persist (AOF) for caps, idempotency, outcomes and opt-outs to survive its restart. A
    campaign's sends are counted only when it has a total; a total added to a campaign later counts
    from then on. Suppression lists never expire: an opt-out holds until an opt-in.
    """

    RETENTION = timedelta(days=30)

    def __init__(self, redis_url: str, prefix: str = "pushplan") -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.prefix = prefix
        self.ttl = int(self.RETENTION.total_seconds())
        self._reserve = self.client.register_script(RESERVE_LUA)
        self._settle = self.client.register_script(SETTLE_LUA)
        self._suppress = self.client.register_script(SUPPRESS_LUA)

    def _keys(self, request: Reservation) -> list[str]:
        return [
            f"{self.prefix}:caps:user:{request.user_id}",
            f"{self.prefix}:caps:send:{request.send_id}",
            f"{self.prefix}:caps:campaign:{request.campaign_id}",
        ]

    def _optout_key(self, user_id: str) -> str:
        return f"{self.prefix}:optout:{user_id}"

    def reserve(self, requests: Sequence[Reservation], settle: Sequence[Settlement] = ()) -> list[Verdict]:
        if len(requests) == 1 and len(settle) <= 1:
            # The send step's case: one script call, the settlement riding in it (no pipeline).
            keys, args = self._reserve_call(requests[0])
            if settle:
                keys += self._keys(settle[0].request)
                args += [settle[0].request.send_id, settle[0].outcome.value]
            return [_verdict(self._reserve(keys=keys, args=args))]
        pipe = self.client.pipeline(transaction=False)
        self._settle_into(pipe, settle)
        for request in requests:
            keys, args = self._reserve_call(request)
            self._reserve(keys=keys, args=args, client=pipe)
        return [_verdict(v) for v in pipe.execute()[len(settle) :]]

    def _reserve_call(self, request: Reservation) -> tuple[list[str], list[Any]]:
        start, end = local_day_bounds(request.at, request.zone)
        cap = request.cap
        numbers = (
            request.at.timestamp(),
            start.timestamp(),
            end.timestamp(),
            cap.per_channel_day,
            cap.per_channel_week,
            cap.per_user_day,
            cap.min_gap.total_seconds(),
            -1 if cap.campaign_total is None else cap.campaign_total,
            self.ttl,
        )
        # repr: a float's shortest text that reads back to the same float.
        return [*self._keys(request), self._optout_key(request.user_id)], [
            request.send_id,
            request.channel,
            " ".join(map(repr, numbers)),
        ]

    def _settle_into(self, pipe: Any, settlements: Sequence[Settlement]) -> None:
        for settlement in settlements:
            self._settle(
                keys=self._keys(settlement.request),
                args=[settlement.request.send_id, settlement.outcome.value],
                client=pipe,
            )

    def settle(self, settlements: Sequence[Settlement]) -> None:
        if settlements:
            pipe = self.client.pipeline(transaction=False)
            self._settle_into(pipe, settlements)
            pipe.execute()

    def release(self, requests: Sequence[Reservation]) -> None:
        self.settle([Settlement(r, Settle.release) for r in requests])

    def outcomes(self, send_ids: Sequence[str]) -> dict[str, Verdict]:
        if not send_ids:
            return {}
        values = self.client.mget([f"{self.prefix}:caps:send:{send_id}" for send_id in send_ids])
        return {
            send_id: _known((value.decode() if isinstance(value, bytes) else str(value)).split(" ", 1)[0])
            for send_id, value in zip(send_ids, values, strict=True)
            if value is not None
        }

    def suppress(self, changes: Sequence[OptChange]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for change in changes:
            self._suppress(
                keys=[self._optout_key(change.user_id)],
                args=[change.channel, change.at.timestamp(), int(change.opted_out)],
                client=pipe,
            )
        pipe.execute()


def _verdict(answer: bytes | str) -> Verdict:
    return Verdict(answer.decode() if isinstance(answer, bytes) else answer)


def _known(status: str) -> Verdict:
    """A send the ledger holds: a settled outcome, or `in_doubt` while only reserved."""
    return Verdict.in_doubt if status == RESERVED else Verdict(status)


class SqlLedger:
    """The ledger in the plan store's SQL database: the `local` profile's, checked with
    FrequencyCap.admits itself inside one write transaction per call (SQLite begins it IMMEDIATE)."""

    def __init__(self, store: PlanStore) -> None:
        self.store = store

    def reserve(self, requests: Sequence[Reservation], settle: Sequence[Settlement] = ()) -> list[Verdict]:
        if not requests and not settle:
            return []
        verdicts: list[Verdict] = []
        with self.store.session() as session:
            _settle(session, settle)
            if not requests:
                return []
            ids = [r.send_id for r in requests]
            known: dict[str, str] = dict(
                session.execute(
                    sa.select(CapLedgerRow.send_id, CapLedgerRow.status).where(CapLedgerRow.send_id.in_(ids))
                ).all()
            )
            users = {r.user_id for r in requests}
            opted = _opted_out(session, users)
            earliest = (min(_utc(r.at) for r in requests) - WEEK).to_pydatetime()
            latest = (max(_utc(r.at) for r in requests) + WEEK).to_pydatetime()
            held: dict[str, list[tuple[pd.Timestamp, str]]] = {}
            for user, at, channel in session.execute(
                sa.select(CapLedgerRow.user_id, CapLedgerRow.at, CapLedgerRow.channel).where(
                    CapLedgerRow.user_id.in_(users),
                    CapLedgerRow.at > earliest,
                    CapLedgerRow.at < latest,
                )
            ):
                held.setdefault(user, []).append((_utc(at), channel))
            campaign_sends = dict(
                session.execute(
                    sa.select(CapLedgerRow.campaign_id, sa.func.count())
                    .where(CapLedgerRow.campaign_id.in_({r.campaign_id for r in requests}))
                    .group_by(CapLedgerRow.campaign_id)
                ).all()
            )
            for request in requests:
                status = known.get(request.send_id)
                out = opted(request.user_id, request.channel)
                if status == RESERVED and out:
                    # In doubt, and the user has opted out since: it may have gone; it must not go again.
                    _settle(session, [Settlement(request, Settle.unknown)])
                    known[request.send_id] = status = Settle.unknown.value
                if status is not None:
                    verdicts.append(_known(status))
                    continue
                if out:
                    verdicts.append(Verdict.opted_out)
                    continue
                at = _utc(request.at)
                mine = held.setdefault(request.user_id, [])
                verdict = _refusal(request.cap, mine, at, request.channel, request.zone)
                total = request.cap.campaign_total
                if (
                    verdict is None
                    and total is not None
                    and campaign_sends.get(request.campaign_id, 0) >= total
                ):
                    verdict = Verdict.campaign_total
                if verdict is None:
                    verdict = Verdict.reserved
                    mine.append((at, request.channel))
                    known[request.send_id] = RESERVED
                    campaign_sends[request.campaign_id] = campaign_sends.get(request.campaign_id, 0) + 1
                    session.add(
                        CapLedgerRow(
                            send_id=request.send_id,
                            user_id=request.user_id,
                            campaign_id=request.campaign_id,
                            channel=request.channel,
                            at=at.to_pydatetime(),
                            status=RESERVED,
                        )
                    )
                verdicts.append(verdict)
        return verdicts

    def settle(self, settlements: Sequence[Settlement]) -> None:
        if settlements:
            with self.store.session() as session:
                _settle(session, settlements)

    def release(self, requests: Sequence[Reservation]) -> None:
        self.settle([Settlement(r, Settle.release) for r in requests])

    def outcomes(self, send_ids: Sequence[str]) -> dict[str, Verdict]:
        if not send_ids:
            return {}
        with self.store.session() as session:
            rows = session.execute(
                sa.select(CapLedgerRow.send_id, CapLedgerRow.status).where(CapLedgerRow.send_id.in_(send_ids))
            ).all()
        return {send_id: _known(status) for send_id, status in rows}

    def suppress(self, changes: Sequence[OptChange]) -> None:
        if not changes:
            return
        with self.store.session() as session:
            for change in changes:
                at = _utc(change.at).to_pydatetime()
                row = session.get(SuppressionRow, (change.user_id, change.channel))
                if row is None:
                    session.add(
                        SuppressionRow(
                            user_id=change.user_id, channel=change.channel, at=at, opted_out=change.opted_out
                        )
                    )
                    session.flush()  # a later change of the same user and channel in this batch finds it
                elif _newer(at, change.opted_out, _utc(row.at).to_pydatetime(), row.opted_out):
                    row.at, row.opted_out = at, change.opted_out


RESERVED = "reserved"


def _settle(session: Any, settlements: Sequence[Settlement]) -> None:
    """Only a `reserved` send is settled: an outcome, once known, is never overwritten."""
    reserved = CapLedgerRow.status == RESERVED
    released = [s.request.send_id for s in settlements if s.outcome is Settle.release]
    if released:
        session.execute(sa.delete(CapLedgerRow).where(CapLedgerRow.send_id.in_(released), reserved))
    for outcome in (Settle.sent, Settle.unknown):
        ids = [s.request.send_id for s in settlements if s.outcome is outcome]
        if ids:
            session.execute(
                sa.update(CapLedgerRow)
                .where(CapLedgerRow.send_id.in_(ids), reserved)
                .values(status=outcome.value)
            )


def _newer(at: datetime, opted_out: bool, than: datetime, than_opted_out: bool) -> bool:
    """Whether a change at `at` overrides one at `than`: later wins; at a tie, the opt-out."""
    return at > than or (at == than and opted_out and not than_opted_out)


def _opted_out(session: Any, users: set[str]) -> Any:
    """A test `(user, channel) -> bool` over these users' suppression lists, read once."""
    entries: dict[str, dict[str, tuple[datetime, bool]]] = {}
    for user, channel, at, out in session.execute(
        sa.select(
            SuppressionRow.user_id, SuppressionRow.channel, SuppressionRow.at, SuppressionRow.opted_out
        ).where(SuppressionRow.user_id.in_(users))
    ):
        entries.setdefault(user, {})[channel] = (_utc(at).to_pydatetime(), bool(out))

    def opted(user: str, channel: str) -> bool:
        mine = entries.get(user)
        if not mine:
            return False
        latest: tuple[datetime, bool] | None = None
        for entry in (mine.get(channel), mine.get(ALL_CHANNELS)):
            if entry is not None and (latest is None or _newer(*entry, *latest)):
                latest = entry
        return latest is not None and latest[1]

    return opted


def _refusal(
    cap: FrequencyCap, held: list[tuple[pd.Timestamp, str]], at: pd.Timestamp, channel: str, zone: str
) -> Verdict | None:
    """Which cap refuses one more send, or None: `FrequencyCap.admits`, asked cap by cap so the item
    can say which one (admits is the rule; the single-cap variants only name the culprit)."""
    if cap.admits(held, at, channel, zone):
        return None
    for verdict, looser in (
        (Verdict.min_gap, _only(cap, min_gap=cap.min_gap)),
        (Verdict.per_user_day, _only(cap, per_user_day=cap.per_user_day)),
        (Verdict.per_channel_day, _only(cap, per_channel_day=cap.per_channel_day)),
    ):
        if not looser.admits(held, at, channel, zone):
            return verdict
    return Verdict.per_channel_week


def _only(cap: FrequencyCap, **kept: object) -> FrequencyCap:
    """`cap` with every limit but `kept` lifted."""
    unlimited = 1 << 30
    fields: dict[str, object] = {
        "per_channel_day": unlimited,
        "per_channel_week": unlimited,
        "per_user_day": unlimited,
        "min_gap": timedelta(0),
    }
    return FrequencyCap(**(fields | kept))  # type: ignore[arg-type]


def _utc(value: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@per_settings
def ledger_for(settings: Settings) -> CapLedger:
    """The profile's ledger, one per process."""
    if settings.profile is Profile.production:
        assert settings.redis_url
        return RedisLedger(settings.redis_url, prefix=settings.feast_project)
    return SqlLedger(PlanStore(settings))
