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
# # 03 · Evaluate a policy offline, and check the estimate against the truth
#
# Before a new policy sends anything, we can estimate what it *would* have earned from what an old
# policy logged, as long as every logged send carries the probability the old policy gave it (its
# propensity). The simulated history was sent by a uniformly random policy (hour × variant), so its
# propensities are known exactly. Three estimators of "clicks per send":
#
# - **IPS**: reweight each logged reward by π_new(logged choice) / π_logged(logged choice);
# - **SNIPS**: the same, normalised by the sum of the weights (less variance, a little bias);
# - **doubly robust**: a reward model's prediction for the new policy's choice, corrected by the IPS
#   term on the model's error: unbiased if either the propensities or the reward model are right.
#
# Because the data is simulated, the simulator's hidden truth tells us what each policy would really
# have earned, so we can see how close each estimate gets.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from features.event_store import EventStore
from features.simulator.population import Population, recent_send_counts, tag_matrix
from features.store import feature_store
from pushplan.notebook import demo_settings
from training.datasets import build_split
from training.evaluation import best_variant
from training.inference import load_newest, predict
from training.off_policy import estimates
from training.pipeline import EVAL_DAYS, EXPLORED_HOURS
from training.specs import SPECS

settings = demo_settings()
spec = SPECS["variant"]
newest = load_newest(spec, settings)
assert newest is not None, "no variant model: run `make demo` (or `pushplan train all`) first"
model, version, is_champion = newest
# A version that did not beat its rules is registered but not champion; it is studied all the same.
print(f"variant model v{version}" + ("" if is_champion else " (not champion: a simple rule serves instead)"))
split = build_split(spec, feature_store(settings), settings, EVAL_DAYS)
test = split.test
print(f"{len(test):,} logged sends on the test days ({split.cutoff:%Y-%m-%d} on), never seen in training")

# %% [markdown]
# ## The logged sends and what the model would have chosen
# For each send, the variant model scores every variant of its campaign for that user at that hour;
# the new policy picks the best. The scores double as the reward model of the doubly robust estimate.

# %%
rows = []
for campaign, sends in test.groupby("campaign_id"):
    variants = split.variants.get(str(campaign))
    if variants is None or len(variants) < 2:
        continue
    pick, scores = best_variant(sends, variants, lambda frame: predict(spec, model, frame))
    ids = variants["variant_id"].to_numpy()
    logged = np.array([np.flatnonzero(ids == v)[0] for v in sends["variant_id"]])
    rows.append(
        pd.DataFrame(
            {
                "user_id": sends["user_id"].to_numpy(),
                "sent_at": sends["event_timestamp"].to_numpy(),
                "campaign_id": campaign,
                "reward": sends["label"].to_numpy(),
                # The history explored hours uniformly and independently of the variant.
                "propensity": sends["propensity"].to_numpy() * EXPLORED_HOURS,
                "variants": len(variants),
                "logged": logged,
                "model_pick": pick,
                "q_logged": scores[np.arange(len(sends)), logged],
                "q_model": scores[np.arange(len(sends)), pick],
                "q_uniform": scores.mean(axis=1),
                "tags": [[list(t) for t in variants["tags"]]] * len(sends),
            }
        )
    )
logged = pd.concat(rows, ignore_index=True)
# Keep what the uniform history logged (pushplan's own campaigns log the planner's mixed policy).
logged = logged[np.isclose(logged["propensity"] * logged["variants"], 1.0)].reset_index(drop=True)
print(
    f"{len(logged):,} sends by the uniform logging policy; the model agrees with the logged variant on "
    f"{(logged['logged'] == logged['model_pick']).mean():.0%} of them"
)

# %%
policies = {
    "model's best variant": ((logged["logged"] == logged["model_pick"]).astype(float), logged["q_model"]),
    "uniformly random variant": (1.0 / logged["variants"], logged["q_uniform"]),
}
estimated = {
    name: estimates(logged["reward"], logged["propensity"], target, direct, logged["q_logged"])
    for name, (target, direct) in policies.items()
}

# %% [markdown]
# ## The truth, from the simulator
# The simulator knows each user's true click probability for any variant at any moment (with their
# fatigue from earlier pushes), so each policy's true value on these sends is an average of known
# probabilities: no sampling noise from the rewards. (The history delivered about 97 % of its sends and
# an undelivered push earns nothing, so logged rewards sit a few percent under the truth of a delivered
# message; estimates share that shortfall.)

# %%
population = Population.load(settings.data_dir / "simulation")
history = EventStore(settings).read_events(["user_id", "timestamp"], event_types=["push_sent"])
idx = population.index_of(logged["user_id"].to_numpy())
when = pd.to_datetime(logged["sent_at"], utc=True).dt.tz_localize(None).to_numpy()
earlier = (
    population.index_of(history["user_id"].to_numpy()),
    history["timestamp"].dt.tz_localize(None).to_numpy(),
)
recent = recent_send_counts(idx, when, [earlier])
true_p = np.zeros((len(logged), int(logged["variants"].max())))
for k in range(true_p.shape[1]):
    has = logged["variants"].to_numpy() > k
    tags = tag_matrix([t[k] if len(t) > k else [] for t in logged["tags"]])
    p = population.click_probability(idx, when, tags, recent, ["push"] * len(logged))
    true_p[:, k] = np.where(has, p, np.nan)
rows_ = np.arange(len(logged))
truth = {
    "model's best variant": float(true_p[rows_, logged["model_pick"]].mean()),
    "uniformly random variant": float(np.nanmean(true_p, axis=1).mean()),
}
print(
    f"logged reward {logged['reward'].mean():.4f}; true value of the logged choices "
    f"{true_p[rows_, logged['logged']].mean():.4f}"
)

# %%
table = pd.DataFrame(
    [
        {
            "policy": name,
            "truth": truth[name],
            **{
                kind.upper(): estimated[name][kind]["value"]
                for kind in ("ips", "snips", "dr")
                if estimated[name][kind]
            },
            **{
                f"{kind.upper()} 95% CI": tuple(np.round(estimated[name][kind]["ci"], 4))
                for kind in ("ips", "snips", "dr")
                if estimated[name][kind]
            },
            "effective sends": round(estimated[name]["effective_rows"]),
        }
        for name in policies
    ]
).set_index("policy")
table.round(4)

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
kinds = ["ips", "snips", "dr"]
for p, name in enumerate(policies):
    for k, kind in enumerate(kinds):
        value = estimated[name][kind]
        lo, hi = value["ci"]
        x = p + (k - 1) * 0.22
        ax.errorbar(
            x,
            100 * value["value"],
            yerr=[[100 * (value["value"] - lo)], [100 * (hi - value["value"])]],
            fmt="o",
            capsize=4,
            label=kind.upper() if p == 0 else None,
            color=f"C{k}",
        )
    ax.hlines(
        100 * truth[name],
        p - 0.4,
        p + 0.4,
        colors="black",
        linestyles="--",
        label="truth (simulator)" if p == 0 else None,
    )
ax.set_xticks(range(len(policies)), list(policies))
ax.set(ylabel="clicks per send (%)", title="Off-policy estimates (95 % intervals) against the truth")
ax.legend()
plt.show()

# %% [markdown]
# Read it as: the estimate is trustworthy when its interval holds the dashed line. The "effective
# sends" column says how much data an estimate really rests on: the model's policy agrees with only
# about one logged send in K, so its estimate uses that share of the log. The doubly robust interval
# is usually the narrowest, because the reward model explains much of each reward.
