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
# # 02 · Train and compare the three models with MLflow
#
# `pushplan train all` (which `make demo` ran) trained the click, send-hour and variant models on
# point-in-time-correct training sets from Feast, logged each run to MLflow and registered a version;
# the `champion` alias marks the version the service loads. Here: the runs side by side, then a
# challenger for the click model, registered under the `challenger` alias, judged against the
# champion on the same test days, and promoted (or rolled back) by moving the alias.

# %%
import dataclasses

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from pushplan.notebook import demo_settings
from training.pipeline import train
from training.specs import SPECS
from training.tracking import CHAMPION, EXPERIMENT, configure, list_models

settings = demo_settings()
client = configure(settings)  # MLflow's tracking and registry in this profile's store
print("tracking URI:", mlflow.get_tracking_uri())

# %% [markdown]
# ## The runs side by side
# Every training run logs its parameters, the metrics on the test days (the last 10 days of history,
# never seen in fitting) and the baselines beside them.

# %%
runs = mlflow.search_runs(experiment_names=[EXPERIMENT], order_by=["attributes.start_time ASC"])
runs = runs[runs["tags.mlflow.runName"].str.startswith("train-")]
columns = {
    "tags.mlflow.runName": "run",
    "params.train_rows": "train rows",
    "metrics.log_loss": "log loss",
    "metrics.base_rate_log_loss": "log loss, base rate",
    "metrics.auc": "AUC",
    "metrics.ece": "calibration error",
    "metrics.within1_hit_rate": "send hour within one hour",
    "metrics.user_mode_hour_within1": "within one hour, user's most frequent hour",
    "metrics.shrinkage_blend_within1": "within one hour, shrunk histogram",
    "metrics.snips_model": "SNIPS clicks, model's variant",
    "metrics.snips_random": "SNIPS clicks, random variant",
    "metrics.snips_best_overall": "SNIPS clicks, best variant overall",
    "tags.promoted": "promoted",
    "tags.baselines": "against the rules",
}
side_by_side = runs[[c for c in columns if c in runs]].rename(columns=columns)
side_by_side.set_index("run").T

# %%
pd.DataFrame(
    [
        {
            "model": m.name,
            "versions": len(m.versions),
            "aliases": m.aliases,
            m.headline_metric or "metric": m.champion_metric,
        }
        for m in list_models(client, {s.registered_name: s.metric for s in SPECS.values()})
    ]
)

# %% [markdown]
# Each model against its baselines on the test days:

# %%
latest = runs.groupby("tags.mlflow.runName").tail(1).set_index("tags.mlflow.runName")
pairs = {
    "click: log loss (lower is better)": ("train-click", "metrics.log_loss", "metrics.base_rate_log_loss"),
    "send hour: within one hour": (
        "train-send-hour",
        "metrics.within1_hit_rate",
        "metrics.shrinkage_blend_within1",
    ),
    "variant: SNIPS clicks per send": ("train-variant", "metrics.snips_model", "metrics.snips_random"),
}
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, (title, (run, model_metric, baseline_metric)) in zip(axes, pairs.items(), strict=True):
    if run not in latest.index:
        continue
    ax.bar(["model", "baseline"], [latest.at[run, model_metric], latest.at[run, baseline_metric]])
    ax.set_title(title, fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A challenger for the click model
# Same features and training set, other LightGBM parameters: more leaves, fewer rows per leaf. `train`
# logs the run, registers a new version and scores the current champion on the same test days.

# %%
champion_spec = SPECS["click"]
name = champion_spec.registered_name
before = client.get_model_version_by_alias(name, CHAMPION)
challenger_spec = dataclasses.replace(
    champion_spec, params={**champion_spec.params, "num_leaves": 31, "min_child_samples": 40}
)
result = train(challenger_spec, settings, promote=False)
client.set_registered_model_alias(name, "challenger", str(result.version))
print(
    f"challenger v{result.version}: {result.metric} {result.value:.4f}; "
    f"champion v{before.version}: {result.champion_value:.4f}"
)

# %%
curve = pd.DataFrame(result.metrics["reliability"])
fig, ax = plt.subplots(figsize=(4.5, 4.5))
top = float(max(curve["predicted"].max(), curve["observed"].max())) * 1.1
ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
ax.plot(curve["predicted"], curve["observed"], "o-", label=f"challenger v{result.version}")
ax.set(xlabel="predicted p(click)", ylabel="observed click rate", title="Calibration on the test days")
ax.legend()
plt.show()

# %% [markdown]
# ## Promote, or roll back
# Promotion is moving the `champion` alias: the service loads `models:/pushplan-click@champion`, so a
# running service picks the new version up on its next load, and rolling back is moving the alias back.
# `train` already moved it if the challenger won on the promotion metric; a person can also decide.

# %%
lower_is_better = not champion_spec.higher_is_better
wins = result.champion_value is None or (
    result.value < result.champion_value if lower_is_better else result.value > result.champion_value
)
client.set_registered_model_alias(name, CHAMPION, str(result.version))  # promote the challenger
print("champion now:", client.get_model_version_by_alias(name, CHAMPION).version)
if not wins:  # it lost on the test days: roll back to the version that was champion before
    client.set_registered_model_alias(name, CHAMPION, str(before.version))
    print(f"rolled back: the challenger lost, v{before.version} is champion again")
print("champion:", client.get_model_version_by_alias(name, CHAMPION).version)
