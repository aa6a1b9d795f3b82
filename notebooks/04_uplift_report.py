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
# # 04 · Read a campaign's uplift report and its Qini curve
#
# What did the campaign change? The report compares everyone the campaign was meant to reach with
# the randomized holdout that got nothing, by assignment (docs/reports.md). This notebook reads the
# same report the operators' page shows, as data: the lifts with their intervals, the segments, the
# uplift models' Qini curves, and which segments the message moves.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import sqlalchemy as sa

from pushplan.db.schema import CampaignRow
from pushplan.db.store import PlanStore
from pushplan.notebook import demo_settings
from reports.report import campaign_report, headline_text

settings = demo_settings()
store = PlanStore(settings)
with store.engine.connect() as connection:
    table = CampaignRow.__table__
    campaigns = pd.DataFrame(
        connection.execute(sa.select(table).order_by(table.c.created_at)).mappings().all()
    )
print("campaigns in the plan store:", ", ".join(campaigns["campaign_id"]))
# The demo's scheduled campaign, the latest without a trigger (its triggered follow-up is reported per
# firing: docs/triggers.md); name another to read it instead.
campaign_id = campaigns.loc[campaigns["trigger_events"].isna(), "campaign_id"].iloc[-1]

# %%
report = campaign_report(settings, campaign_id)
print(headline_text(report))
print("sample ratio check p =", round(report["srm"]["p_value"], 3), "mismatch:", report["srm"]["mismatch"])

# %% [markdown]
# ## Every outcome, campaign against holdout

# %%
rows = []
for outcome, result in report["outcomes"].items():
    for arm, numbers in result["arms"].items():
        rows.append(
            {
                "outcome": outcome,
                "kind": result["kind"],
                "holdout mean": result["control"]["mean"],
                f"{arm} mean": numbers["mean"],
                "lift": numbers["lift_abs"],
                "95% CI": tuple(round(v, 4) for v in numbers["lift_abs_ci"]),
                "relative lift": numbers["lift_rel"],
                "p": numbers["p_value"],
            }
        )
outcomes = pd.DataFrame(rows).set_index("outcome")
outcomes.round(4)

# %% [markdown]
# Opens and clicks cannot happen without a message, so the holdout's rate is 0 and the lift is the
# campaign's own rate. Purchases are what the holdout is for: people buy anyway, and only the
# comparison tells how many purchases the campaign added. At a few hundred holdout users that
# interval is wide: a holdout large enough to see a purchase lift is a choice to make before sending.

# %% [markdown]
# ## By segment: where the clicks came from

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for ax, column in zip(axes, ["variant_id", "rfm_cell"], strict=True):
    values = report["segments"].get(column, {})
    names, lifts, lows, highs = [], [], [], []
    for value, segment in values.items():
        if "outcomes" not in segment:
            continue  # too few users in an arm to compare
        numbers = segment["outcomes"]["clicked"]["arms"]["campaign"]
        names.append(value)
        lifts.append(100 * numbers["lift_abs"])
        lows.append(100 * (numbers["lift_abs"] - numbers["lift_abs_ci"][0]))
        highs.append(100 * (numbers["lift_abs_ci"][1] - numbers["lift_abs"]))
    ax.errorbar(lifts, range(len(names)), xerr=[lows, highs], fmt="o", capsize=4)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="click lift (percentage points)", title=f"by {column}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The uplift models and their Qini curves
# A T-learner and an X-learner on LightGBM model each user's purchase uplift, fitted on 70 % of the
# users and judged on the held-out 30 %. Sorting held-out users by predicted uplift and counting the
# incremental purchases among the first φ of them gives the Qini curve; the random line is what
# targeting without a model gets. Above the line: the model finds the users the message moves.

# %%
uplift = report["uplift"]["campaign"]
if "learners" in uplift:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, learner in uplift["learners"].items():
        curve = learner["curve"]
        ax.plot(curve["fraction"], curve["qini"], label=f"{name} (Qini {learner['qini_coefficient']:.2f})")
    random = uplift["random_curve"]
    ax.plot(random["fraction"], random["qini"], "--", color="grey", label="random targeting")
    ax.set(xlabel="share of users targeted", ylabel="incremental purchases", title="Qini curve (held out)")
    ax.legend()
    plt.show()
    print(
        f"{uplift['rows']['control']:,} holdout users: with so few the curve is noisy; read it with the lifts"
    )
else:
    print("no uplift model:", uplift["skipped"])

# %% [markdown]
# ## Which segments the message moves, and which would have bought anyway

# %%
if "segments" in uplift:
    verdicts = pd.concat(
        [pd.DataFrame(rows).assign(segment=column) for column, rows in uplift["segments"].items()]
    )
    verdicts.set_index(["segment", "value"])[["n", "predicted_uplift", "predicted_control", "verdict"]].round(
        4
    )

# %% [markdown]
# ## The operators' page
# `pushplan report --campaign ID` writes the same report as one HTML file; `pushplan serve` serves it at
# `/reports/campaigns/ID` to operator keys.

# %%
page = settings.data_dir / "reports" / f"{campaign_id}.html"
print(page if page.exists() else f"run: pushplan report --campaign {campaign_id}")
