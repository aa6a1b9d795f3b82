# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Explore the event log and the Feast features
#
# What the data looks like before any model: how many events of each kind, when users are active in
# *their own* local time, how the RFM segments and lifecycle stages that Feast serves are spread, and
# how many users arrive with no history at all (cold start).
#
# Runs on the data `make demo` wrote (or `PUSHPLAN_DATA_DIR`).

# %%
import matplotlib.pyplot as plt
import pandas as pd

from features.audiences import preview
from features.event_store import EventStore
from features.store import feature_store, read_stored, snapshot_span
from pushplan.clock import local_clock
from pushplan.notebook import demo_settings

settings = demo_settings()
events = EventStore(settings)
stats = events.stats()
print(f"{stats.users:,} users, {stats.events:,} events from {stats.first} to {stats.last}")
pd.Series(stats.by_type, name="events").sort_values(ascending=False).to_frame()

# %% [markdown]
# ## Activity by local hour
# Timestamps are stored in UTC; a user's day is in their own zone. The same hour in UTC is morning for
# one user and night for another, which is why the send-hour model works in local hours.

# %%
users = events.read_users()[["user_id", "timezone", "platform", "push_opt_in"]]
opens = events.read_events(["user_id", "timestamp"], event_types=["app_open"])
opens = opens.merge(users[["user_id", "timezone"]], on="user_id", how="left")
opens["timezone"] = opens["timezone"].fillna(settings.default_timezone)
naive_utc = opens["timestamp"].dt.tz_localize(None).to_numpy()
opens["local_hour"] = local_clock(naive_utc, opens["timezone"].to_numpy())[0]  # pushplan's own conversion
opens["utc_hour"] = opens["timestamp"].dt.hour

fig, ax = plt.subplots(figsize=(9, 3.5))
width = 0.4
for offset, column, label in ((-width / 2, "utc_hour", "UTC hour"), (width / 2, "local_hour", "local hour")):
    share = opens[column].value_counts(normalize=True).sort_index()
    ax.bar(share.index + offset, 100 * share.to_numpy(), width, label=label)
ax.set(xlabel="hour of day", ylabel="% of app opens", title="App opens by hour: UTC vs the user's own")
ax.legend()
plt.show()

# %% [markdown]
# The local-hour profile has the shape of people's days; the UTC one blurs the time zones together.
# Activity by local hour and by zone:

# %%
by_zone = pd.crosstab(opens["timezone"], opens["local_hour"], normalize="index")
fig, ax = plt.subplots(figsize=(9, 3.2))
image = ax.imshow(100 * by_zone.to_numpy(), aspect="auto", cmap="Blues")
ax.set_yticks(range(len(by_zone)), by_zone.index)
ax.set(xlabel="local hour", title="Share of a zone's app opens by local hour (%)")
fig.colorbar(image, ax=ax)
plt.show()

# %% [markdown]
# ## Labels: RFM cells and lifecycle stages, as Feast serves them
# The labels operators choose audiences by (docs/audiences.md), read from Feast's offline store as
# of the last daily snapshot: the same values a plan made then would have used (point-in-time
# correct).

# %%
store = feature_store(settings)
_, last_snapshot = snapshot_span(settings)
user_ids = users["user_id"].astype(str).tolist()
refs = [
    "user_rfm:rfm_cell",
    "user_rfm:lifecycle_stage",
    "user_rfm:frequency_90d",
    "user_rfm:monetary_90d",
    "user_engagement:activity_events",
]
features = read_stored(store, user_ids, refs, source="offline", at=last_snapshot)
features.insert(0, "user_id", user_ids)
features.describe(include="all").T

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, column in zip(axes, ["rfm_cell", "lifecycle_stage"], strict=True):
    counts = features[column].fillna("(none)").value_counts()
    ax.barh(counts.index, counts.to_numpy())
    ax.set(title=f"{column} on {last_snapshot:%Y-%m-%d}", xlabel="users")
fig.tight_layout()
plt.show()

# %%
segments = features.groupby(features["rfm_cell"].fillna("(none)")).agg(
    users=("user_id", "size"),
    purchases_90d=("frequency_90d", "mean"),
    revenue_90d=("monetary_90d", "mean"),
    activity=("activity_events", "mean"),
)
segments.sort_values("revenue_90d", ascending=False).round(2)

# %% [markdown]
# ## An audience, previewed
# Who a rule selects as of the last snapshot: what `pushplan audience preview` and
# `POST /v1/audiences/preview` answer before a campaign is created for it.

# %%
shown = preview(settings, 'lifecycle_stage in ("active", "sleeping") and rfm_cell != "lost"', last_snapshot)
print(f"{shown['count']:,} of {shown['users']:,} users, {shown['reachable']['any']:,} reachable by push")
pd.DataFrame(shown["by_label"]["rfm_cell"], index=["users"]).T

# %% [markdown]
# ## Cold start
# Users with no events before the last snapshot have no history for the models: the planner falls
# back to population defaults for them (see docs/features.md).

# %%
active = set(events.read_events(["user_id"], end=last_snapshot)["user_id"].astype(str))
cold = ~users["user_id"].astype(str).isin(active)
new_stage = (features["lifecycle_stage"] == "new").mean()
print(f"no history before {last_snapshot:%Y-%m-%d}: {cold.mean():.1%} of users ({cold.sum():,})")
print(f"lifecycle stage 'new' (signed up in the last days): {new_stage:.1%}")
print(f"opted in to push: {users['push_opt_in'].astype(bool).mean():.1%}")

# %% [markdown]
# ## Pushes so far: the funnel of the history
# Sent → delivered → opened → clicked, per delivered message, the rates a campaign report compares.

# %%
kinds = pd.Series(stats.by_type)
funnel = kinds.reindex(["push_sent", "push_delivered", "push_opened", "push_clicked", "converted"]).fillna(0)
rates = (funnel / funnel["push_delivered"]).rename("per delivered")
pd.concat([funnel.rename("events").astype(int), rates.round(4)], axis=1)
