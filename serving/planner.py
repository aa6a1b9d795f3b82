"""The planner: pure decision logic that turns model scores into plan items. No I/O.

For each user of an audience, in this order (docs/planner.md):
0. audience: a listed user the campaign's audience rule does not select is `not_in_audience`;
1. eligibility: the first of the campaign's channels the user is opted in to, else `opted_out`;
2. holdout: a hash of (campaign, user) puts `holdout_fraction` of eligible users in control;
3. timing: the local send slots inside the window (every `slot_minutes`, and the window's start),
   after `now` and outside quiet hours in the user's own zone (`no_window` / `quiet_hours` when
   there are none); the hour is the best of the user's smoothed hour scores among the allowed
   hours, at its earliest slot (a `send: now` campaign: the first open slot, now itself when
   planned after the window opened);
4. variant: the highest variant score;
5. exploration: with probability `exploration` a uniformly random allowed hour and variant; every
   item logs the propensity of the (hour, variant) it carries under this mixed policy;
6. value: below `min_p_click`, skip with `low_value`.
Holdout items carry the slot and variant they would have been sent, so uplift can be measured
over the same windows. Every timed item keeps the models' choice before exploration too
(`model_variant_id`, `model_send_at`), for doubly robust off-policy estimates.
The same inputs and seed always give the same plan.

`arbitrate_caps` then weighs the plan against what other campaigns already hold for the same
users (docs/planner.md, "Frequency caps across campaigns"): where a send would break a frequency
cap, the higher-value item wins; a losing new send is deferred to its next-best slot inside the
window or skipped `capped`, a losing held item is returned to be marked `capped` (re-planning its
campaign may defer it).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from pushplan.caps import FrequencyCap, item_value
from pushplan.clock import smooth_hours
from pushplan.domain import OPT_IN_OF_CHANNEL, Campaign, Decision, ItemState, Reason
from pushplan.windows import SLOT_MINUTES, QuietHours, window_slots

PLAN_NAMESPACE = uuid.UUID("8f0c5d36-8a3e-4b8e-9d59-2f2d1f6c1a70")


@dataclass
class Audience:
    """Who may be planned for, with the models' scores for them (rows aligned).

    `users` has user_id, timezone and the opt-in columns, as a frame or as `features.columns`
    arrays (what a read gives: no frame per request); `hour_scores` is (users × 24) over local
    hours; `variant_scores` is (users × variants) p(click), variants in the campaign's order.
    """

    users: pd.DataFrame | Mapping[str, np.ndarray]
    hour_scores: np.ndarray
    variant_scores: np.ndarray
    model_versions: dict[str, str] = field(default_factory=dict)
    # Which users the campaign's audience rule selects (None: all): the others are not planned,
    # skipped with `not_in_audience` (only listed users can be outside; plan jobs plan members only).
    members: np.ndarray | None = None


def user_column(users: pd.DataFrame | Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """One column of an Audience's users as a numpy array, in row order."""
    values = users[name]
    return values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)


def user_ids_of(audience: Audience) -> np.ndarray:
    """The audience's user ids as an object array of str."""
    return user_column(audience.users, "user_id").astype(str).astype(object)


def exploration_draws(
    campaign_id: str, user_ids: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three uniforms in [0, 1) per user, fixed by (seed, campaign, user): whether to explore, which
    hour and which variant. Keyed by user rather than drawn in sequence, so a user's plan does not
    depend on who else is in the same request or plan-job partition."""
    digests = b"".join(
        hashlib.sha256(f"{seed}\x1f{campaign_id}\x1f{user}".encode()).digest()[:24] for user in user_ids
    )
    words = np.frombuffer(digests, dtype=">u8").reshape(-1, 3).astype(np.float64) / 2.0**64
    return words[:, 0], words[:, 1], words[:, 2]


def holdout_draw(campaign_id: str, user_ids: pd.Series | np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per user, fixed by (campaign, user): the same user stays in control."""
    digests = [hashlib.sha256(f"{campaign_id}\x1f{user}".encode()).digest()[:8] for user in user_ids]
    return np.array([int.from_bytes(d, "big") for d in digests], dtype=np.float64) / 2.0**64


def local_slots(
    campaign: Campaign, zone: str, now: datetime, quiet: QuietHours, minutes: int = SLOT_MINUTES
) -> pd.DataFrame:
    """Every send slot in the window, after `now`, with its UTC instant, local hour and whether quiet."""
    slots = window_slots(
        pd.Timestamp(campaign.window.start), pd.Timestamp(campaign.window.end), zone, minutes
    )
    later = slots.send_at >= pd.Timestamp(now).value
    send_at = pd.DatetimeIndex(slots.send_at[later]).tz_localize("UTC")
    frame = pd.DataFrame({"send_at": send_at, "local": send_at.tz_convert(zone), "hour": slots.hour[later]})
    frame["quiet"] = quiet.mask()[frame["hour"].to_numpy()]
    return frame


def plan(
    campaign: Campaign,
    audience: Audience,
    now: datetime,
    *,
    seed: int = 0,
    quiet: QuietHours | None = None,
    min_p_click: float = 0.0,
    slot_minutes: int = SLOT_MINUTES,
) -> pd.DataFrame:
    """One plan item per user of the audience, as a frame with the PlanItem columns.

    A `send: now` campaign takes each user's first open slot instead of their best hour (a user in
    quiet hours gets the first slot after them, if the window holds one); only its variant is
    chosen by the model or explored.

    Vectorised over users: the columns are numpy arrays filled per time zone and assembled into a
    frame once, so one user costs little more than a call and a million users a few seconds.
    """
    quiet = quiet or QuietHours()
    users = audience.users
    user_ids = user_ids_of(audience)
    n, n_variants = len(user_ids), len(campaign.variants)
    if audience.hour_scores.shape != (n, 24) or audience.variant_scores.shape != (n, n_variants):
        raise ValueError("scores must be (users × 24) and (users × the campaign's variants)")
    zone_names = user_column(users, "timezone").astype(str).astype(object)
    decision = np.full(n, Decision.skip.value, dtype=object)
    reason = np.full(n, None, dtype=object)
    state = np.full(n, ItemState.suppressed.value, dtype=object)
    variant_id = np.full(n, None, dtype=object)
    model_variant_id = np.full(n, None, dtype=object)
    local_send_at = np.full(n, None, dtype=object)
    send_at = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)  # NaT until timed
    model_send_at = send_at.copy()
    p_click = np.full(n, np.nan)
    propensity = np.full(n, np.nan)

    channel = np.full(n, None, dtype=object)
    for option in reversed(campaign.channels):  # the first opted-in channel wins
        column = OPT_IN_OF_CHANNEL.get(option)
        reachable = (
            _flags(user_column(users, column))
            if column is not None and column in users
            else np.ones(n, dtype=bool)
        )
        channel[reachable] = option.value
    eligible = channel != None  # noqa: E711 (elementwise on an object array)
    reason[~eligible] = Reason.opted_out.value
    if audience.members is not None:
        outside = ~np.asarray(audience.members, dtype=bool)
        channel[outside], reason[outside] = None, Reason.not_in_audience.value
        eligible &= ~outside

    in_control = eligible & (holdout_draw(campaign.campaign_id, user_ids) < campaign.holdout_fraction)
    explore_draw, random_hour_draw, variant_draw = exploration_draws(campaign.campaign_id, user_ids, seed)
    random_variant = np.minimum((variant_draw * n_variants).astype(int), n_variants - 1)
    greedy_variant = audience.variant_scores.argmax(axis=1)
    variant_ids = np.array([v.variant_id for v in campaign.variants], dtype=object)
    hour_value = smooth_hours(np.asarray(audience.hour_scores, dtype=float))
    window_start, window_end = pd.Timestamp(campaign.window.start), pd.Timestamp(campaign.window.end)
    not_before = max(window_start, pd.Timestamp(now)).value
    quiet_mask = quiet.mask()
    slots_from = window_start
    if campaign.send == "now" and window_start < pd.Timestamp(now).ceil("s") < window_end:
        # Planned after its window opened (a request a moment late, a trigger's firing processed
        # seconds after its event): it sends from now, not from the next slot of the grid.
        slots_from = pd.Timestamp(now).ceil("s")

    zone_codes, zones = pd.factorize(zone_names, sort=True)
    for code, zone in enumerate(zones):
        rows = np.flatnonzero((zone_codes == code) & eligible)
        if rows.size == 0:
            continue
        slots = window_slots(slots_from, window_end, str(zone), slot_minutes)
        later = slots.send_at >= not_before
        if not later.any():
            reason[rows] = Reason.no_window.value
            continue
        open_ = later & ~quiet_mask[slots.hour]
        if not open_.any():
            reason[rows] = Reason.quiet_hours.value
            continue
        # The earliest open slot of each allowed local hour (slots are in time order).
        hours_allowed, first = np.unique(slots.hour[open_], return_index=True)
        slot_of_hour = np.full(24, -1)
        slot_of_hour[hours_allowed] = np.flatnonzero(open_)[first]
        allowed = slot_of_hour >= 0
        explored = explore_draw[rows] < campaign.exploration
        if campaign.send == "now":  # the first open slot, for everyone: only the variant is chosen
            first_open = int(slots.hour[np.flatnonzero(open_)[0]])
            greedy_hour = np.full(rows.size, first_open)
            random_hour, hour_choices = greedy_hour, 1
        else:
            greedy_hour = np.where(allowed[None, :], hour_value[rows], -np.inf).argmax(axis=1)
            random_hour = hours_allowed[(random_hour_draw[rows] * hours_allowed.size).astype(int)]
            hour_choices = hours_allowed.size
        hour = np.where(explored, random_hour, greedy_hour)
        variant = np.where(explored, random_variant[rows], greedy_variant[rows])
        uniform = campaign.exploration / (hour_choices * n_variants)
        is_greedy = (hour == greedy_hour) & (variant == greedy_variant[rows])
        slot = slot_of_hour[hour]
        send_at[rows] = slots.send_at[slot]
        local_send_at[rows] = slots.local_iso[slot]
        variant_id[rows] = variant_ids[variant]
        model_send_at[rows] = slots.send_at[slot_of_hour[greedy_hour]]
        model_variant_id[rows] = variant_ids[greedy_variant[rows]]
        p_click[rows] = audience.variant_scores[rows, variant]
        propensity[rows] = np.where(is_greedy, 1 - campaign.exploration + uniform, uniform)
        reason[rows[explored & ~is_greedy]] = Reason.exploration.value
        decision[rows] = Decision.send.value
        state[rows] = ItemState.planned.value

    timed = decision == Decision.send.value
    control = timed & in_control
    decision[control], reason[control] = Decision.holdout.value, Reason.holdout.value
    state[control] = ItemState.suppressed.value
    low = timed & ~control & (p_click < min_p_click)
    decision[low], reason[low] = Decision.skip.value, Reason.low_value.value
    state[low] = ItemState.suppressed.value
    return pd.DataFrame(
        {
            "plan_id": plan_ids(campaign.campaign_id, user_ids),
            "campaign_id": campaign.campaign_id,
            "user_id": user_ids,
            "decision": decision,
            "reason": reason,
            "channel": channel,
            "variant_id": variant_id,
            "send_at": pd.DatetimeIndex(send_at.view("datetime64[ns]")).tz_localize("UTC"),
            "local_send_at": local_send_at,
            "p_click": p_click,
            "expected_uplift": np.nan,
            "propensity": propensity,
            "model_variant_id": model_variant_id,
            "model_send_at": pd.DatetimeIndex(model_send_at.view("datetime64[ns]")).tz_localize("UTC"),
            "model_versions": [dict(audience.model_versions) for _ in range(n)],
            "state": state,
            "timezone": zone_names,
        }
    )


def _flags(values: np.ndarray) -> np.ndarray:
    """Booleans of a column that may hold None (missing: False)."""
    if values.dtype == bool:
        return values
    return np.asarray(pd.Series(values, dtype=object).fillna(False), dtype=bool)


def plan_ids(
    campaign_id: str, user_ids: Iterable[str], firing_ids: Iterable[str] | None = None
) -> np.ndarray:
    """The item id of each (campaign, user), or of each (campaign, user, firing) of a triggered
    campaign: stable, so re-planning a user, or replaying an event, names the item it already made."""
    keys = (
        [f"{campaign_id}\x1f{user}" for user in user_ids]
        if firing_ids is None
        else [
            f"{campaign_id}\x1f{user}\x1f{firing}" for user, firing in zip(user_ids, firing_ids, strict=True)
        ]
    )
    return np.array([str(uuid.uuid5(PLAN_NAMESPACE, key)) for key in keys], dtype=object)


@dataclass
class Arbitration:
    """A plan after the caps: its items, and other campaigns' held items it displaced."""

    items: pd.DataFrame
    displaced: list[str]


def arbitrate_caps(
    campaign: Campaign,
    items: pd.DataFrame,
    audience: Audience,
    now: datetime,
    cap: FrequencyCap,
    held: pd.DataFrame | None = None,
    *,
    quiet: QuietHours | None = None,
    dispatched: int = 0,
    slot_minutes: int = SLOT_MINUTES,
) -> Arbitration:
    """Keep a plan's sends within `cap`, given what other campaigns hold (`held`, pushplan.caps.HELD_COLUMNS).

    For each send that would break a cap, in this order: it stays if displacing other campaigns'
    movable (not yet queued) items of lower (priority, value) makes room, weakest first; else it
    is deferred to its best admissible open slot in the window (reason `deferred`; `model_send_at`
    stays the models' slot); else it is skipped with reason `capped`. Then `campaign_total` keeps
    the most valuable sends, counting the `dispatched` ones already queued or sent. Holdouts are
    untouched: they send nothing.
    `items` must be `plan(campaign, audience, now, ...)`'s result, rows aligned with the audience.
    """
    quiet = quiet or QuietHours()
    items = items.copy()
    zones = user_column(audience.users, "timezone")
    sends = items["decision"].to_numpy() == Decision.send.value
    if not cap.allows_any:
        _mark_capped(items, sends)
        return Arbitration(items, [])
    displaced: list[str] = []
    if held is not None and not held.empty:
        by_user = {str(user): frame for user, frame in held.groupby("user_id")}
        hour_value = smooth_hours(np.asarray(audience.hour_scores, dtype=float))
        values = item_value(campaign, items["p_click"].to_numpy())
        open_slots: dict[str, pd.DataFrame] = {}
        capped = np.zeros(len(items), dtype=bool)
        for row in np.flatnonzero(sends & items["user_id"].isin(by_user).to_numpy()):
            mine = by_user[items.at[row, "user_id"]]
            mine = mine[~mine["plan_id"].isin(displaced)]
            zone, channel = str(zones[row]), str(items.at[row, "channel"])
            at = items.at[row, "send_at"]
            pairs = list(zip(mine["send_at"], mine["channel"], strict=True))
            if cap.admits(pairs, at, channel, zone):
                continue
            priority, value = mine["priority"], mine["value"]
            lower = (priority < campaign.priority) | ((priority == campaign.priority) & (value < values[row]))
            weaker = mine[mine["movable"].astype(bool) & lower]
            kept, dropped = mine, []
            for plan_id in weaker.sort_values(["priority", "value", "plan_id"])["plan_id"]:
                kept = kept[kept["plan_id"] != plan_id]
                dropped.append(plan_id)
                if cap.admits(zip(kept["send_at"], kept["channel"], strict=True), at, channel, zone):
                    displaced += dropped
                    break
            else:
                if zone not in open_slots:
                    slots = local_slots(campaign, zone, now, quiet, slot_minutes)
                    open_slots[zone] = slots[~slots["quiet"]]
                moved = _best_admissible_slot(open_slots[zone], hour_value[row], pairs, cap, channel, zone)
                if moved is None:
                    capped[row] = True
                else:
                    items.at[row, "send_at"] = moved["send_at"]
                    items.at[row, "local_send_at"] = moved["local"].isoformat()
                    items.at[row, "reason"] = Reason.deferred.value
        _mark_capped(items, capped)
    if cap.campaign_total is not None:
        _keep_most_valuable(items, campaign, max(0, cap.campaign_total - dispatched))
    return Arbitration(items, displaced)


def _best_admissible_slot(
    slots: pd.DataFrame,
    hour_value: np.ndarray,
    held: list[tuple[pd.Timestamp, str]],
    cap: FrequencyCap,
    channel: str,
    zone: str,
) -> pd.Series | None:
    """The open slot the user values most (earliest among equals) that the caps admit, if any."""
    ranked = slots.assign(value=hour_value[slots["hour"].to_numpy()]).sort_values(
        ["value", "send_at"], ascending=[False, True]
    )
    for _, slot in ranked.iterrows():
        if cap.admits(held, slot["send_at"], channel, zone):
            return slot
    return None


def _mark_capped(items: pd.DataFrame, rows: np.ndarray) -> None:
    if not rows.any():  # nothing to mark: no frame assignment (most one-user plans)
        return
    items.loc[rows, ["decision", "reason", "state"]] = [
        Decision.skip.value,
        Reason.capped.value,
        ItemState.suppressed.value,
    ]


def _keep_most_valuable(items: pd.DataFrame, campaign: Campaign, capacity: int) -> None:
    """Past the campaign's total, the least valuable sends are skipped `capped` (ties: by plan_id)."""
    sends = items[items["decision"] == Decision.send.value]
    if len(sends) <= capacity:
        return
    ranked = sends.assign(value=item_value(campaign, sends["p_click"].to_numpy())).sort_values(
        ["value", "plan_id"], ascending=[False, True]
    )
    over = np.zeros(len(items), dtype=bool)
    over[items.index.get_indexer(ranked.index[capacity:])] = True
    _mark_capped(items, over)
