"""Model quality against the simple rules a practitioner would use, on real data and on the simulator.

    python -m benchmarks.quality [--start 2019-04-01 --end 2019-10-01 --test-days 21] [--users N]
    python -m benchmarks.quality --simulated [--rows 2000x30,3000x45,5000x60,20000x30] [--seeds 1,2,3]

Real data: the ValleyBike trips in ../shared/data/valleybike_trips (MIT; 14,826 riders of a public
bike share, one time zone), converted by the data set's own `to_pushplan.py`, one ride = one
`app_open`. The riders' trips between --start and --end are imported as a data team would, the
feature tables built, and `train all` run: the send-hour model trains (there are no pushes, so the
click and variant models say what they miss). The last --test-days days are held out. Printed:
the training run's test figures beside the three rules (overall and per history size), whether
the gate promoted the model, and a replay of planning: for each held-out day, every rider who rode
that day is planned through the serving path (offline features as of the day's start, a campaign
window of that whole local day, no quiet hours), and the planned hour is compared with the hour of
their first ride that day, for the champion or the rule serving, and for each rule.

Simulated (--simulated): the robustness table of docs/models.md: for each users × days and seed,
simulate, train all, and evaluate against the simulation's hidden truth (oracle share, gap from time
and from variant), beside the random and population-hour baselines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


# Where the workplace keeps the shared data sets, for a clone made elsewhere (CI clones anywhere).
WORKPLACE_SHARED = Path("/work/shared/data")


def shared_data() -> Path:
    """The shared data sets: $PUSHPLAN_SHARED_DATA, else the `shared/data` beside or above the repo,
    else the workplace's."""
    if os.environ.get("PUSHPLAN_SHARED_DATA"):
        return Path(os.environ["PUSHPLAN_SHARED_DATA"])
    for parent in REPO.parents:
        candidate = parent / "shared" / "data"
        if (candidate / "valleybike_trips").exists():
            return candidate
    return WORKPLACE_SHARED


def valleybike(
    out: Path,
    start: str,
    end: str,
    users: int | None = None,
    seed: int = 0,
    converter_args: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """users.csv and events.csv of the riders' trips in [start, end) (UTC), by the data set's own
    converter (with `converter_args`); `users` keeps that many riders, drawn at random, with all
    their trips."""
    source = shared_data() / "valleybike_trips"
    if not (source / "trips.csv.gz").exists():
        raise FileNotFoundError(
            f"the ValleyBike data set is not at {source}: set PUSHPLAN_SHARED_DATA to the shared data folder"
        )
    converted = out / "converted"
    subprocess.run(
        [sys.executable, str(source / "to_pushplan.py"), str(converted), *converter_args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    events = pd.read_csv(converted / "events.csv", dtype={"user_id": str, "event_id": str})
    when = pd.to_datetime(events["timestamp"], utc=True)
    events = events[(when >= pd.Timestamp(start, tz="UTC")) & (when < pd.Timestamp(end, tz="UTC"))]
    riders = pd.unique(events["user_id"])
    if users is not None and users < len(riders):
        riders = np.random.default_rng(seed).choice(np.sort(riders), size=users, replace=False)
        events = events[events["user_id"].isin(riders)]
    profiles = pd.read_csv(converted / "users.csv", dtype={"user_id": str})
    profiles = profiles[profiles["user_id"].isin(riders)]
    out.mkdir(parents=True, exist_ok=True)
    profiles.to_csv(out / "users.csv", index=False)
    events.to_csv(out / "events.csv", index=False)
    return out / "users.csv", out / "events.csv"


def load(settings: Any, files: list[Path]) -> Any:
    """Import the files, build the feature tables and register the repo: a data team's first steps."""
    from features.event_store import EventStore
    from features.store import apply, feature_store, write_defaults
    from features.tables import build_feature_tables

    events = EventStore(settings)
    for path in files:
        events.import_file(path)
    build_feature_tables(settings)
    write_defaults(settings)
    store = feature_store(settings)
    apply(store, settings)
    return store


def train_all(settings: Any, test_days: int) -> dict[str, Any]:
    """`pushplan train all`: each model the data allows; the others' reasons."""
    from training.datasets import NoExamples
    from training.pipeline import train
    from training.specs import SPECS

    results: dict[str, Any] = {}
    for name, spec in SPECS.items():
        try:
            results[name] = train(spec, settings, eval_days=test_days)
        except NoExamples as exc:
            results[name] = str(exc)
    return results


def replay(settings: Any, store: Any, events: pd.DataFrame, days: list[pd.Timestamp]) -> pd.DataFrame:
    """Plan each held-out day for the riders who rode that day; the planned local hour beside the
    hour of their first ride, as served and under each rule. One row per (rider, day).

    Each day's features are read once through the serving path (Feast's offline store as of the
    day's start) and every policy plans from the same read."""
    from features.store import PROFILE_REFS, profile_frame, read_stored, service_features, stored_refs
    from pushplan.domain import Campaign
    from pushplan.windows import QuietHours
    from serving.audience import is_weekend
    from serving.planner import Audience, plan
    from serving.scoring import ModelSet
    from training.habits import RULES
    from training.specs import SEND_HOUR
    from training.tracking import configure, serving_rule

    served = ModelSet.load(settings)
    chosen = serving_rule(configure(settings), SEND_HOUR.registered_name)
    assert chosen is not None, "training records the rule serving without a champion"
    policies: dict[str, ModelSet] = {"served": served}
    for rule in RULES:
        policies[rule] = ModelSet(settings, rules={SEND_HOUR.name: (rule, chosen[1])})
    service = served.services[SEND_HOUR.name]
    zone = "America/New_York"
    local = pd.to_datetime(events["timestamp"], utc=True).dt.tz_convert(zone)
    frames = []
    for day in days:
        that_day = events[local.dt.normalize() == day.tz_localize(zone)]
        first = that_day.assign(hour=local.loc[that_day.index].dt.hour).sort_values("timestamp")
        first = first.drop_duplicates("user_id")
        if first.empty:
            continue
        start = day.tz_localize(zone)
        campaign = Campaign.model_validate(
            {
                "campaign_id": f"replay-{day:%Y%m%d}",
                "name": "replay",
                "channels": ["push"],
                "variants": [{"variant_id": "a", "title": "Ride today", "tags": []}],
                "window": {"start": start.isoformat(), "end": (start + pd.Timedelta(days=1)).isoformat()},
                "holdout_fraction": 0.0,
                "exploration": 0.0,
            }
        )
        users = first["user_id"].tolist()
        now = start.tz_convert("UTC")
        stored = read_stored(
            store, users, [*PROFILE_REFS, *stored_refs(store, service)], source="offline", at=now
        )
        profiles = profile_frame(settings, users, stored)
        features = service_features(store, settings, service, users, stored)
        features["is_weekend"] = is_weekend(start, profiles["timezone"])
        ridden = that_day.assign(hour=local.loc[that_day.index].dt.hour).groupby("user_id")["hour"].agg(set)
        row = pd.DataFrame(
            {
                "user_id": users,
                "day": day,
                "truth": first["hour"].to_numpy(),
                "rode": ridden.loc[users].to_numpy(),
            }
        )
        for name, models in policies.items():
            audience = Audience(profiles, models.hour_scores(features), np.ones((len(users), 1)))
            items = plan(campaign, audience, now, quiet=QuietHours(0, 0))
            row[name] = pd.to_datetime(items["send_at"], utc=True).dt.tz_convert(zone).dt.hour.to_numpy()
        frames.append(row)
    return pd.concat(frames, ignore_index=True)


def any_hits(rode: pd.Series, chosen: np.ndarray) -> tuple[float, float]:
    """Top-1 and within one hour of any of the rides that day (the rider was out at the push's hour)."""
    apart = np.array(
        [min(min(abs(h - c), 24 - abs(h - c)) for h in hours) for hours, c in zip(rode, chosen, strict=True)]
    )
    return float((apart == 0).mean()), float((apart <= 1).mean())


def real(args: argparse.Namespace) -> None:
    from pushplan.settings import Settings
    from training.evaluation import hour_hits
    from training.habits import RULES

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        began = time.perf_counter()
        files = valleybike(root / "input", args.start, args.end, args.users)
        events = pd.read_csv(files[1], dtype={"user_id": str})
        print(
            f"ValleyBike {args.start} .. {args.end}: {events['user_id'].nunique():,} riders, "
            f"{len(events):,} rides; the last {args.test_days} days held out"
        )
        settings = Settings(data_dir=root / "data")
        store = load(settings, files)
        results = train_all(settings, args.test_days)
        for name, result in results.items():
            if isinstance(result, str):
                print(f"not trained: {name}: {result}")
        hour = results["send-hour"]
        if isinstance(hour, str):
            raise SystemExit(f"the send-hour model did not train: {hour}")
        m = hour.metrics
        print(f"\nsend hour, training run's test days ({m['rows']:,} engagements): top-1 / within one hour")
        model = f"model (v{hour.version})"
        print(f"  {model:<24} {m['top1_hit_rate']:.3f} / {m['within1_hit_rate']:.3f}")
        for rule in RULES:
            print(f"  {rule:<24} {m[f'{rule}_top1']:.3f} / {m[f'{rule}_within1']:.3f}")
        print("  by history size (within one hour): " + ", ".join(["model", *RULES]))
        for bucket, row in m["by_history"].items():
            figures = " ".join(f"{row[f'{p}_within1']:.3f}" for p in ["model", *RULES])
            print(f"    {bucket:>4} events ({row['rows']:>6,} rows): {figures}")
        print(f"  gate: {hour.verdict.describe()}; serving {hour.serving}")

        last = (
            pd.to_datetime(events["timestamp"], utc=True).dt.tz_convert("America/New_York").max().normalize()
        )
        days = [(last - pd.Timedelta(days=k)).tz_localize(None) for k in range(args.test_days)][::-1]
        planned = replay(settings, store, events, days)
        print(f"\nreplayed plans: {len(planned):,} (rider, day) pairs over {len(days)} days")
        print(f"  {'':<32} {'first ride of the day':>22}  {'any ride that day':>20}")
        figures = {}
        for policy in ["served", *RULES]:
            hit = hour_hits(planned["truth"], planned[policy])
            figures[policy] = (hit["top1"], hit["within1"])
            anywhere = any_hits(planned["rode"], planned[policy].to_numpy())
            label = f"served ({hour.serving})" if policy == "served" else policy
            print(
                f"  {label:<32} {figures[policy][0]:>10.3f} / {figures[policy][1]:.3f}"
                f"  {anywhere[0]:>12.3f} / {anywhere[1]:.3f}"
            )
        print(f"\n{time.perf_counter() - began:.0f} s")
        if args.chart:
            _chart(args.chart, m, figures)


def last_trip(args: argparse.Namespace) -> None:
    """The issue's first look, on the pipeline: each regular rider's last trip (riders with 6 to 500
    trips, 2018-2020), predicted from the features as of it, by a send-hour model trained only on
    engagements before --cutoff; riders whose last trip is after the cut-off are judged."""
    from features.store import training_set
    from pushplan.clock import local_clock
    from pushplan.settings import Settings
    from training.evaluation import hour_hits
    from training.habits import RULES, fitted_rule_scores
    from training.inference import choose_hours, load_newest, predict
    from training.pipeline import train
    from training.specs import SEND_HOUR
    from training.tracking import configure, serving_rule

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        began = time.perf_counter()
        files = valleybike(
            root / "input",
            "2018-01-01",
            "2021-01-01",
            converter_args=("--min-events", "6", "--max-events", "500"),
        )
        events = pd.read_csv(files[1], dtype={"user_id": str})
        events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
        riders = events["user_id"].nunique()
        print(f"ValleyBike riders with 6-500 trips: {riders:,} riders, {len(events):,} trips")
        settings = Settings(data_dir=root / "data")
        store = load(settings, files)
        cutoff = pd.Timestamp(args.cutoff, tz="UTC")
        last_day = events["timestamp"].max().normalize()
        result = train(SEND_HOUR, settings, eval_days=int((last_day - cutoff).days) + 1)
        judged = result.verdict.describe() if result.verdict else ""
        print(f"send-hour v{result.version} trained on engagements before {cutoff:%Y-%m-%d}: {judged}")
        m = result.metrics
        print(f"  its test days ({m['rows']:,} engagements), top-1 / within one hour:")
        for name, key in (("model", None), *((rule, rule) for rule in RULES)):
            top1 = m["top1_hit_rate"] if key is None else m[f"{key}_top1"]
            within = m["within1_hit_rate"] if key is None else m[f"{key}_within1"]
            print(f"    {name:<22} {top1:.3f} / {within:.3f}")
        last = events.sort_values("timestamp").groupby("user_id").tail(1)
        last = last[last["timestamp"] >= cutoff].reset_index(drop=True)
        zones = np.full(len(last), "America/New_York", dtype=object)
        hour, weekend = local_clock(last["timestamp"].dt.tz_localize(None).to_numpy(), zones)
        rows = pd.DataFrame(
            {
                "user_id": last["user_id"],
                "event_timestamp": last["timestamp"],
                "is_weekend": weekend.astype(float),
            }
        )
        features = training_set(store, settings, SEND_HOUR.feature_service, rows)
        newest = load_newest(SEND_HOUR, settings)
        assert newest is not None
        model, version, _ = newest
        params = serving_rule(configure(settings), SEND_HOUR.registered_name)
        assert params is not None
        choices = {f"model v{version}": choose_hours(predict(SEND_HOUR, model, features))}
        for rule in RULES:
            choices[rule] = choose_hours(fitted_rule_scores(rule, params[1], features))
        print(
            f"\neach rider's last trip, {len(last):,} riders whose last trip is on or after {cutoff:%Y-%m-%d}"
        )
        print("  top-1 / within one hour")
        for name, chosen in choices.items():
            hit = hour_hits(hour, chosen)
            print(f"  {name:<24} {hit['top1']:.3f} / {hit['within1']:.3f}")
        print(f"\n{time.perf_counter() - began:.0f} s")


def simulated(args: argparse.Namespace) -> None:
    """The robustness table: oracle share and its gaps for each history size and seed."""
    from features.simulator import simulate
    from pushplan.settings import Settings
    from training.champions import evaluate_champions

    sizes = [tuple(int(v) for v in size.split("x")) for size in args.rows.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    columns = (
        "oracle_share",
        "gap_from_time",
        "gap_from_variant",
        "random_share",
        "population_best_hour_share",
        "best_single_variant_share",
    )
    print(f"{'users x days':<14} {'seed':>4} " + " ".join(f"{c:>26}" for c in columns) + "  serving")
    rows = []
    for users, days in sizes:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as scratch:
                root = Path(scratch)
                simulate(root / "sim", users=users, days=days, seed=seed)
                settings = Settings(data_dir=root / "data")
                load(
                    settings,
                    [root / "sim" / n for n in ("users.parquet", "events.parquet", "campaigns.json")],
                )
                results = train_all(settings, args.test_days)
                oracle = evaluate_champions(settings, root / "sim")["oracle"]
                serving = ", ".join(
                    f"{name} {r.serving}" if not isinstance(r, str) else f"{name} untrained"
                    for name, r in results.items()
                )
                rows.append({"users": users, "days": days, "seed": seed, **{c: oracle[c] for c in columns}})
                print(
                    f"{f'{users:,} x {days}':<14} {seed:>4} "
                    + " ".join(f"{oracle[c]:>26.3f}" for c in columns)
                    + f"  {serving}",
                    flush=True,
                )
    table = pd.DataFrame(rows).groupby(["users", "days"], sort=False)[list(columns)].agg(["mean", "min"])
    print("\nmean (min) over seeds")
    for (users, days), row in table.iterrows():
        print(
            f"{f'{users:,} x {days}':<14} "
            + " ".join(f"{row[(c, 'mean')]:>17.3f} ({row[(c, 'min')]:.3f})" for c in columns)
        )


def _chart(path: Path, metrics: dict[str, Any], replayed: dict[str, tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.habits import RULES

    policies = ["model", *RULES]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(policies))
    test = [(metrics["top1_hit_rate"], metrics["within1_hit_rate"])] + [
        (metrics[f"{r}_top1"], metrics[f"{r}_within1"]) for r in RULES
    ]
    plans = [replayed["served"], *(replayed[r] for r in RULES)]
    for ax, values, title in ((axes[0], test, "test days' engagements"), (axes[1], plans, "replayed plans")):
        ax.bar(x - 0.2, [v[0] for v in values], 0.4, label="top-1")
        ax.bar(x + 0.2, [v[1] for v in values], 0.4, label="within one hour")
        ax.set_xticks(
            x,
            ["served" if p == "model" and ax is axes[1] else p.replace("_", " ") for p in policies],
            rotation=12,
        )
        ax.set(title=f"ValleyBike send hour: {title}", ylabel="hit rate")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--start", default="2019-04-01", help="first day of rides imported (UTC)")
    parser.add_argument("--end", default="2019-10-01", help="day after the last ride imported (UTC)")
    parser.add_argument("--test-days", type=int, default=21, help="last days held out")
    parser.add_argument("--users", type=int, default=None, help="keep this many riders, drawn at random")
    parser.add_argument("--chart", type=Path, default=None, help="write the figures as a PNG chart")
    parser.add_argument("--simulated", action="store_true", help="the simulator's robustness table instead")
    parser.add_argument(
        "--last-trip", action="store_true", help="each regular rider's last trip, 2018-2020, instead"
    )
    parser.add_argument("--cutoff", default="2019-10-01", help="--last-trip: train on engagements before it")
    parser.add_argument(
        "--rows", default="2000x30,3000x45,5000x60,20000x30", help="users x days, comma-separated"
    )
    parser.add_argument("--seeds", default="1,2,3", help="simulation seeds, comma-separated")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from cli.main import quiet_libraries

    quiet_libraries()
    if args.simulated:
        simulated(args)
    elif args.last_trip:
        last_trip(args)
    else:
        real(args)


if __name__ == "__main__":
    main()
