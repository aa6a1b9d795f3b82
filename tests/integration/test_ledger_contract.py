"""One contract, two ledgers: the SQL ledger (local) and the Redis Lua ledger (production) must give the
same verdicts as `FrequencyCap.admits`, the one cap rule, for any sequence of sends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dispatch.ledger import (
    ALL_CHANNELS,
    CapLedger,
    OptChange,
    RedisLedger,
    Reservation,
    Settle,
    Settlement,
    SqlLedger,
    Verdict,
    local_day_bounds,
)
from pushplan.caps import FrequencyCap
from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from tests.services import REDIS_URL, require_services

pytestmark = pytest.mark.integration

CAP = FrequencyCap(per_channel_day=2, per_channel_week=4, per_user_day=3, min_gap=timedelta(minutes=30))
T0 = datetime(2026, 10, 30, 12, tzinfo=UTC)  # New York and Berlin change clocks within the week after


@pytest.fixture(params=["sql", "redis"])
def make_ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A factory of empty ledgers of one kind (hypothesis needs a fresh one per example)."""
    made: list[str] = []

    def make() -> CapLedger:
        if request.param == "sql":
            settings = Settings(data_dir=tmp_path_factory.mktemp("ledger"))
            migrate(settings)
            return SqlLedger(PlanStore(settings))
        require_services()
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        made.append(prefix)
        return RedisLedger(REDIS_URL, prefix=prefix)

    yield make
    if made:
        client = redis.Redis.from_url(REDIS_URL)
        for prefix in made:
            keys = list(client.scan_iter(f"{prefix}:*"))
            if keys:
                client.delete(*keys)


def ask(
    send_id: str,
    at: datetime,
    *,
    user: str = "u",
    channel: str = "push",
    campaign: str = "c",
    zone: str = "UTC",
    cap: FrequencyCap = CAP,
) -> Reservation:
    return Reservation(send_id, user, campaign, channel, at, zone, cap)


def test_a_send_id_is_reserved_once_and_free_again_after_release(make_ledger) -> None:
    ledger = make_ledger()
    first = ask("s1", T0)
    assert ledger.reserve([first]) == [Verdict.reserved]
    assert ledger.reserve([first]) == [Verdict.in_doubt]
    assert ledger.reserve([ask("s2", T0 + timedelta(minutes=10))]) == [Verdict.min_gap]
    ledger.release([first])
    assert ledger.reserve([ask("s2", T0 + timedelta(minutes=10))]) == [Verdict.reserved]
    assert ledger.reserve([first]) == [Verdict.min_gap]  # its slot is taken now; the id itself is free


def test_a_settled_send_answers_its_outcome_and_keeps_counting(make_ledger) -> None:
    ledger = make_ledger()
    sent, unknown = ask("s1", T0), ask("s2", T0 + timedelta(hours=1))
    assert ledger.reserve([sent]) == [Verdict.reserved]
    # The settlement rides with the next reservation: one round trip, applied first.
    assert ledger.reserve([unknown], settle=[Settlement(sent, Settle.sent)]) == [Verdict.reserved]
    ledger.settle([Settlement(unknown, Settle.unknown)])
    assert ledger.reserve([sent, unknown]) == [Verdict.sent, Verdict.unknown]
    # Both still hold the per channel day cap (2).
    assert ledger.reserve([ask("s3", T0 + timedelta(hours=3))]) == [Verdict.per_channel_day]


def test_opt_outs_suppress_per_channel_until_a_later_opt_in(make_ledger) -> None:
    ledger = make_ledger()
    hour = timedelta(hours=1)
    loose = FrequencyCap(99, 99, 99, timedelta(0))
    ledger.suppress([OptChange("u", ALL_CHANNELS, T0, opted_out=True)])
    assert ledger.reserve([ask("a", T0 + hour, cap=loose), ask("b", T0, user="v", cap=loose)]) == [
        Verdict.opted_out,
        Verdict.reserved,
    ]
    ledger.suppress(
        [
            OptChange("u", "push", T0 + hour, opted_out=False),  # back on push only
            OptChange("u", "sms", T0 - hour, opted_out=False),  # older than the opt-out: no effect
        ]
    )
    assert ledger.reserve(
        [ask("c", T0 + 2 * hour, cap=loose), ask("d", T0 + 2 * hour, channel="sms", cap=loose)]
    ) == [Verdict.reserved, Verdict.opted_out]
    # Changes may arrive out of order: an older opt-out after a newer opt-in changes nothing.
    ledger.suppress([OptChange("u", "push", T0 + 30 * timedelta(minutes=1), opted_out=True)])
    assert ledger.reserve([ask("e", T0 + 3 * hour, cap=loose)]) == [Verdict.reserved]
    ledger.suppress([OptChange("u", ALL_CHANNELS, T0 + 4 * hour, opted_out=True)])
    assert ledger.reserve([ask("f", T0 + 5 * hour, cap=loose)]) == [Verdict.opted_out]
    # A send settled before the opt-out stays what it was; one still in doubt must not go again.
    ledger.settle([Settlement(ask("e", T0 + 3 * hour, cap=loose), Settle.sent)])
    assert ledger.reserve([ask("e", T0 + 3 * hour, cap=loose)]) == [Verdict.sent]
    assert ledger.reserve([ask("c", T0 + 2 * hour, cap=loose)]) == [Verdict.unknown]
    assert ledger.outcomes(["c", "e", "never"]) == {"c": Verdict.unknown, "e": Verdict.sent}
    # An outcome, once known, is never overwritten.
    ledger.settle([Settlement(ask("e", T0 + 3 * hour, cap=loose), Settle.release)])
    assert ledger.outcomes(["e"]) == {"e": Verdict.sent}


def test_each_cap_refuses_by_name(make_ledger) -> None:
    ledger = make_ledger()
    hour = timedelta(hours=1)
    verdicts = ledger.reserve(
        [
            ask("a", T0),
            ask("b", T0 + hour),
            ask("c", T0 + 2 * hour),  # third push today: per channel day
            ask("d", T0 + 2 * hour, channel="sms"),  # third message today: fine
            ask("e", T0 + 3 * hour, channel="email"),  # fourth message today: per user day
        ]
    )
    assert verdicts == [
        Verdict.reserved,
        Verdict.reserved,
        Verdict.per_channel_day,
        Verdict.reserved,
        Verdict.per_user_day,
    ]
    day = timedelta(days=1)
    # Two more pushes on the next two days make four in seven days; a fifth is refused all week.
    assert ledger.reserve([ask("f", T0 + day), ask("g", T0 + 2 * day)]) == [Verdict.reserved] * 2
    assert ledger.reserve([ask("h", T0 + 3 * day)]) == [Verdict.per_channel_week]
    assert ledger.reserve([ask("i", T0 + 7 * day + 2 * hour)]) == [Verdict.reserved]  # the window moved on
    total = FrequencyCap(9, 9, 9, timedelta(0), campaign_total=2)
    assert ledger.reserve(
        [ask(f"t{u}", T0, user=f"x{u}", campaign="capped", cap=total) for u in range(3)]
    ) == [Verdict.reserved, Verdict.reserved, Verdict.campaign_total]


def test_a_day_is_the_users_local_day_even_when_it_has_25_hours(make_ledger) -> None:
    """New York's 2026-11-01 lasts 25 hours (04:00 UTC to 05:00 UTC next day)."""
    ledger = make_ledger()
    start, end = local_day_bounds(datetime(2026, 11, 1, 12, tzinfo=UTC), "America/New_York")
    assert (start, end) == (datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 5, tzinfo=UTC))
    daily = FrequencyCap(per_channel_day=1, per_channel_week=9, per_user_day=9, min_gap=timedelta(0))
    ny = {"zone": "America/New_York", "cap": daily}
    assert ledger.reserve([ask("a", start, **ny)]) == [Verdict.reserved]
    assert ledger.reserve([ask("b", end - timedelta(minutes=1), **ny)]) == [Verdict.per_channel_day]
    assert ledger.reserve([ask("c", end, **ny)]) == [Verdict.reserved]  # the next local day
    # The same instants are other days in Kolkata (UTC+5:30): 09:30 on the 1st, 10:29 on the 2nd.
    kolkata = {"user": "k", "zone": "Asia/Kolkata", "cap": daily}
    assert ledger.reserve([ask("d", start, **kolkata), ask("e", end - timedelta(minutes=1), **kolkata)]) == [
        Verdict.reserved,
        Verdict.reserved,
    ]


ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]
sends = st.lists(
    st.tuples(
        st.integers(0, 3),  # user
        st.integers(0, 10 * 24 * 4),  # quarter-hours after T0: ten days across two DST changes
        st.sampled_from(["push", "sms"]),
        st.sampled_from([0, 1]),  # campaign
    ),
    min_size=1,
    max_size=40,
)
caps = st.builds(
    FrequencyCap,
    per_channel_day=st.integers(0, 3),
    per_channel_week=st.integers(0, 6),
    per_user_day=st.integers(0, 4),
    min_gap=st.sampled_from([timedelta(0), timedelta(minutes=45), timedelta(hours=3)]),
    campaign_total=st.one_of(st.none(), st.integers(0, 15)),
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sends=sends, cap=caps, zone=st.sampled_from(ZONES))
def test_both_ledgers_agree_with_the_cap_rule(make_ledger, sends, cap, zone) -> None:
    ledger = make_ledger()
    held: dict[int, list[tuple[pd.Timestamp, str]]] = {}
    per_campaign: dict[int, int] = {}
    for n, (user, quarter, channel, campaign) in enumerate(sends):
        at = T0 + timedelta(minutes=15 * quarter)
        (verdict,) = ledger.reserve(
            [ask(f"s{n}", at, user=f"u{user}", channel=channel, campaign=f"c{campaign}", zone=zone, cap=cap)]
        )
        mine = held.setdefault(user, [])
        stamp = pd.Timestamp(at)
        expected = cap.admits(mine, stamp, channel, zone) and (
            cap.campaign_total is None or per_campaign.get(campaign, 0) < cap.campaign_total
        )
        assert (verdict is Verdict.reserved) == expected, (n, verdict, mine, at)
        if expected:
            mine.append((stamp, channel))
            per_campaign[campaign] = per_campaign.get(campaign, 0) + 1
