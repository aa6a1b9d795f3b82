"""The frequency-cap ledger: one atomic step per send that checks idempotency and the caps and reserves.

A reservation is keyed by its send id (the plan item id, or `<plan_id>:<n>` for a fallback re-send):
- a send id already reserved is a `duplicate` (an earlier attempt got this far, and may have called
  the channel: the dispatcher decides from the plan store what that means);
- else the send is checked against `pushplan.caps.FrequencyCap` — per channel per local day and per
  rolling week, per user per local day, the minimum gap, and the campaign total — against every
  reservation the user holds across campaigns, and reserved only if all hold.
A failed channel call releases its reservation; a successful one keeps it (it is the send's record
for later caps).

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
from typing import Protocol
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from dispatch.plan_store import CapLedgerRow, PlanStore
from pushplan.caps import WEEK, FrequencyCap
from pushplan.settings import Profile, Settings, per_settings


class Verdict(StrEnum):
    reserved = "reserved"
    duplicate = "duplicate"
    # Capped, by the cap that refused (checked in this order):
    min_gap = "min_gap"
    per_user_day = "per_user_day"
    per_channel_day = "per_channel_day"
    per_channel_week = "per_channel_week"
    campaign_total = "campaign_total"

    @property
    def capped(self) -> bool:
        return self not in (Verdict.reserved, Verdict.duplicate)


@dataclass(frozen=True)
class Reservation:
    send_id: str
    user_id: str
    campaign_id: str
    channel: str
    at: datetime  # aware: when the message goes out
    zone: str  # the user's IANA zone, which decides what a "day" is
    cap: FrequencyCap


class CapLedger(Protocol):
    def reserve(self, requests: Sequence[Reservation]) -> list[Verdict]:
        """One verdict per request, in order; each request is checked after those before it."""
        ...

    def release(self, requests: Sequence[Reservation]) -> None:
        """Forget these reservations (their channel call failed): they no longer count."""
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
# idempotency key, the campaign's sends (a set). Epoch seconds are floats; bounds follow admits:
# the gap is |t - at| < gap, a day is [start, end), a week window is (end - 7 days, end].
RESERVE_LUA = """
local user_key, send_key, campaign_key = KEYS[1], KEYS[2], KEYS[3]
local send_id, channel = ARGV[1], ARGV[2]
local at, day_start, day_end = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local per_channel_day, per_channel_week = tonumber(ARGV[6]), tonumber(ARGV[7])
local per_user_day, gap = tonumber(ARGV[8]), tonumber(ARGV[9])
local total, ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
local week = 604800
if redis.call('EXISTS', send_key) == 1 then return 'duplicate' end
-- What no cap can need any more (older than the retention before this send) goes, so a user's set
-- holds at most the retention's sends however long they stay.
redis.call('ZREMRANGEBYSCORE', user_key, '-inf', '(' .. (at - ttl))
if gap > 0 and redis.call('ZCOUNT', user_key, '(' .. (at - gap), '(' .. (at + gap)) > 0 then
  return 'min_gap'
end
local day = redis.call('ZRANGEBYSCORE', user_key, day_start, '(' .. day_end)
if #day + 1 > per_user_day then return 'per_user_day' end
local suffix = '|' .. channel
local on_channel = 0
for _, member in ipairs(day) do
  if string.sub(member, -#suffix) == suffix then on_channel = on_channel + 1 end
end
if on_channel + 1 > per_channel_day then return 'per_channel_day' end
local near = redis.call('ZRANGEBYSCORE', user_key, '(' .. (at - week), '(' .. (at + week), 'WITHSCORES')
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
redis.call('ZADD', user_key, at, send_id .. suffix)
redis.call('EXPIRE', user_key, ttl)
redis.call('SET', send_key, send_id .. suffix, 'EX', ttl)
if total >= 0 then  -- only a campaign with a total needs its sends counted
  redis.call('SADD', campaign_key, send_id)
  redis.call('EXPIRE', campaign_key, ttl)
end
return 'reserved'
"""

RELEASE_LUA = """
local member = redis.call('GET', KEYS[2])
if member then redis.call('ZREM', KEYS[1], member) end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""


class RedisLedger:
    """The ledger in Redis, one Lua script call per send, pipelined per chunk.

    The script touches three keys of different hash slots, so on Redis Cluster they must share a
    hash tag; pushplan's keys are `{pushplan}:…`-free today because the production profile is one
    Redis. A reservation is kept for `RETENTION` (longer than the widest cap, a week either side),
    and Redis must persist (AOF) for caps and idempotency to survive its restart. A campaign's sends
    are counted only when it has a total; a total added to a campaign later counts from then on.
    """

    RETENTION = timedelta(days=30)

    def __init__(self, redis_url: str, prefix: str = "pushplan") -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.prefix = prefix
        self._reserve = self.client.register_script(RESERVE_LUA)
        self._release = self.client.register_script(RELEASE_LUA)

    def _keys(self, request: Reservation) -> list[str]:
        return [
            f"{self.prefix}:caps:user:{request.user_id}",
            f"{self.prefix}:caps:send:{request.send_id}",
            f"{self.prefix}:caps:campaign:{request.campaign_id}",
        ]

    def reserve(self, requests: Sequence[Reservation]) -> list[Verdict]:
        pipe = self.client.pipeline(transaction=False)
        ttl = int(self.RETENTION.total_seconds())
        for request in requests:
            start, end = local_day_bounds(request.at, request.zone)
            cap = request.cap
            self._reserve(
                keys=self._keys(request),
                args=[
                    request.send_id,
                    request.channel,
                    request.at.timestamp(),
                    start.timestamp(),
                    end.timestamp(),
                    cap.per_channel_day,
                    cap.per_channel_week,
                    cap.per_user_day,
                    cap.min_gap.total_seconds(),
                    -1 if cap.campaign_total is None else cap.campaign_total,
                    ttl,
                ],
                client=pipe,
            )
        return [Verdict(v.decode() if isinstance(v, bytes) else v) for v in pipe.execute()]

    def release(self, requests: Sequence[Reservation]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for request in requests:
            self._release(keys=self._keys(request), args=[request.send_id], client=pipe)
        pipe.execute()


class SqlLedger:
    """The ledger in the plan store's SQL database: the `local` profile's, checked with
    FrequencyCap.admits itself inside one write transaction per chunk."""

    def __init__(self, store: PlanStore) -> None:
        self.store = store

    def reserve(self, requests: Sequence[Reservation]) -> list[Verdict]:
        if not requests:
            return []
        verdicts: list[Verdict] = []
        with self.store.session() as session:
            ids = [r.send_id for r in requests]
            reserved = set(
                session.scalars(sa.select(CapLedgerRow.send_id).where(CapLedgerRow.send_id.in_(ids)))
            )
            earliest = min(r.at for r in requests) - WEEK
            latest = max(r.at for r in requests) + WEEK
            held: dict[str, list[tuple[pd.Timestamp, str]]] = {}
            for user, at, channel in session.execute(
                sa.select(CapLedgerRow.user_id, CapLedgerRow.at, CapLedgerRow.channel).where(
                    CapLedgerRow.user_id.in_({r.user_id for r in requests}),
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
                if request.send_id in reserved:
                    verdicts.append(Verdict.duplicate)
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
                    reserved.add(request.send_id)
                    campaign_sends[request.campaign_id] = campaign_sends.get(request.campaign_id, 0) + 1
                    session.add(
                        CapLedgerRow(
                            send_id=request.send_id,
                            user_id=request.user_id,
                            campaign_id=request.campaign_id,
                            channel=request.channel,
                            at=at.to_pydatetime(),
                        )
                    )
                verdicts.append(verdict)
        return verdicts

    def release(self, requests: Sequence[Reservation]) -> None:
        if requests:
            with self.store.session() as session:
                session.execute(
                    sa.delete(CapLedgerRow).where(CapLedgerRow.send_id.in_([r.send_id for r in requests]))
                )


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
