"""`pushplan demo`: the tour on the local profile, end to end, through the real service and a real
Celery worker. The service and the worker run as their own processes (`pushplan serve`, `pushplan
worker`), and the tour plans through the HTTP API the way a campaign system would, so it shows the
real service rather than a function call."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.audiences import print_preview
from cli.campaigns import print_dispatch_counts
from cli.events import events_import, events_stats, simulate
from cli.features import features_apply, features_build, features_materialize
from cli.labels import labels_define
from cli.models import ModelName, evaluate, train
from cli.output import out
from cli.plans import print_plan_summary
from cli.reports import report
from pushplan.settings import get_settings

if TYPE_CHECKING:
    import httpx
    import pandas as pd

    from pushplan.domain import Campaign


def demo(
    users: Annotated[int, typer.Option(min=1, help="How many users to simulate.")] = 5_000,
    days: Annotated[int, typer.Option(min=1, help="How many days of history.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """The tour on the local profile: simulate, import, features, train, evaluate, serve and plan,
    dispatch through a Celery worker, the simulated users' responses posted back, and the uplift report;
    then a triggered follow-up of the day's purchases, fired, sent, answered and reported."""
    started = time.monotonic()
    settings = get_settings()
    sim_dir = settings.data_dir / "simulation"
    out.rule("1. simulate")
    simulate(out_dir=sim_dir, users=users, days=days, seed=seed)
    out.rule("2. import")
    events_import(
        [sim_dir / "users.parquet", sim_dir / "events.parquet", sim_dir / "campaigns.json"], kind=None
    )
    events_stats(as_json=False)
    out.rule("3. features")
    # An operator's own label, computed with the tables and counted in the report's "By label".
    labels_define("recent_buyer", "did purchase in last 7 days", author="demo")
    features_build()
    features_apply()
    features_materialize()
    out.rule("4. train")
    train(ModelName.all, tune=0, promote=False)
    out.rule("5. evaluate")
    evaluate(as_json=False, sim_dir=sim_dir)
    out.rule("6. serve and plan")
    campaign_id = _demo_plan_through_the_service(settings)
    out.rule("7. dispatch")
    _demo_dispatch(settings, campaign_id)
    out.rule("8. responses")
    _demo_responses(settings, campaign_id, sim_dir)
    out.rule("9. report")
    report(campaign=campaign_id, json_path=settings.data_dir / "reports" / f"{campaign_id}.json")
    out.rule("10. a triggered follow-up")
    followup_id = _demo_trigger(settings, campaign_id)
    _demo_responses(settings, followup_id, sim_dir)
    out.rule("11. the follow-up's report")
    report(campaign=followup_id, json_path=settings.data_dir / "reports" / f"{followup_id}.json")
    _demo_next_steps(settings, campaign_id, sim_dir, time.monotonic() - started)


def _demo_next_steps(settings: Any, campaign_id: str, sim_dir: Path, seconds: float) -> None:
    """Where to look next: the MLflow UI, the API docs, the report page, the notebooks."""
    tracking = (settings.data_dir / "mlflow.db").resolve()
    page = (settings.data_dir / "reports" / f"{campaign_id}.html").resolve()
    # The commands as they can be typed here: .venv/bin/... unless the virtualenv is on PATH.
    where = Path(sys.executable).parent
    on_path = os.environ.get("PATH", "").split(os.pathsep)
    bin_dir = "" if str(where) in on_path else f"{os.path.relpath(where)}/"
    out.rule("next")
    out.print(
        f"The tour took {seconds / 60:.1f} min. The simulator's hidden truth is in {sim_dir / 'truth'}.\n"
        f"  models in MLflow:  {bin_dir}mlflow ui --backend-store-uri sqlite:///{tracking}\n"
        f"                     then http://127.0.0.1:5000\n"
        f"  the API and docs:  {bin_dir}pushplan serve --port 8000   then http://127.0.0.1:8000/docs\n"
        f"  the report page:   {page}\n"
        f"                     served to operators: KEY=$({bin_dir}pushplan keys create --role operator)\n"
        f'                     curl -H "X-API-Key: $KEY" http://127.0.0.1:8000/reports/campaigns/{campaign_id}\n'
        f"  plan items:        KEY=$({bin_dir}pushplan keys create --role campaign)\n"
        f'                     curl -H "X-API-Key: $KEY" '
        f"'http://127.0.0.1:8000/v1/campaigns/{campaign_id}/plan-items?limit=3'\n"
        f"  the notebooks:     make notebooks",
        highlight=False,
        soft_wrap=True,
    )


def _demo_plan_through_the_service(settings: Any) -> str:
    """Start the HTTP service and a worker, preview the demo's audience, create the campaign for it
    and plan the audience with a plan job, all through the API as a campaign system would."""
    from features.event_store import EventStore
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from serving.keys import Role, create_key

    last = EventStore(settings).stats().last
    assert last is not None  # the tour imported events a step earlier
    # The campaign runs for the day after the simulated history, planned as of its start.
    start = datetime.combine(last.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    campaign = demo_campaign(start, DEMO_AUDIENCE)
    migrate(settings)
    key = create_key(PlanStore(settings), Role.campaign)
    with running_service(settings.data_dir, key) as service, running_worker(settings.data_dir, 2):
        out.print(f"service at {service.base_url} (log: {service.log})", highlight=False)
        with service.client() as client:
            body = {"rule": DEMO_AUDIENCE, "channels": list(campaign.channels), "now": start.isoformat()}
            shown = client.post("/v1/audiences/preview", json=body)
            shown.raise_for_status()
        print_preview(shown.json())
        items = plan_audience_through_api(service, campaign, start)
    out.print(
        f"created campaign {campaign.campaign_id!r} ({len(campaign.variants)} variants, "
        f"{start:%Y-%m-%d} UTC) for {DEMO_AUDIENCE} and planned its {len(items):,} users "
        "through a plan job (POST /v1/campaigns/{id}/plan-jobs)",
        highlight=False,
    )
    print_plan_summary(items, f"plan: {len(items):,} users")
    return campaign.campaign_id


def _demo_dispatch(settings: Any, campaign_id: str) -> None:
    """Start the campaign and replay its window through a real worker (the sandbox channel)."""
    from dispatch.control import control, flush_events, item_states
    from dispatch.replay import replay
    from features.simulator.answers import read_outbox
    from pushplan.db.store import PlanStore

    store = PlanStore(settings)
    campaign = store.get_campaign(campaign_id)
    assert campaign is not None  # the tour created it a step earlier
    control(store, campaign_id, "dispatch")
    with running_worker(settings.data_dir.resolve()) as worker:
        out.print(f"worker pid {worker.pid} (log: {settings.data_dir / 'worker.log'})", highlight=False)
        chunks = replay(store, settings, campaign)
    moved = flush_events(store, settings)
    counts = item_states(store, campaign_id)
    sent = int(counts.loc[counts["state"] == "sent", "items"].sum())
    outbox = read_outbox(settings.sandbox_dir / "outbox.jsonl", campaign_id)
    out.print(
        f"replayed {campaign.window.start:%Y-%m-%d} every half hour: {chunks} send tasks, {sent:,} sent, "
        f"{len(outbox):,} messages in {settings.sandbox_dir / 'outbox.jsonl'}, "
        f"{moved:,} push_sent/push_delivered events stored",
        highlight=False,
    )
    print_dispatch_counts(counts, f"{campaign_id}: items by state")


def _demo_responses(settings: Any, campaign_id: str, sim_dir: Path) -> None:
    """The simulated users answer what was sent; the answers go back through POST /v1/events."""
    from collections import Counter

    from features.simulator.answers import answer_sends, post_events, read_outbox
    from features.simulator.population import Population
    from pushplan.db.store import PlanStore
    from serving.keys import Role, create_key

    store = PlanStore(settings)
    campaign = store.get_campaign(campaign_id)
    assert campaign is not None
    holdouts, after = [], None
    while True:
        page = store.list_items(campaign_id, decision="holdout", limit=5_000, after=after)
        holdouts += [item.user_id for item in page]
        if len(page) < 5_000:
            break
        after = page[-1].plan_id
    sent = read_outbox(settings.sandbox_dir / "outbox.jsonl", campaign_id)
    events = answer_sends(Population.load(sim_dir), campaign, sent, holdouts)
    key = create_key(store, Role.events)  # what an app backend gets: it may post events, nothing else
    with running_service(settings.data_dir, key) as service, service.client() as client:
        totals = post_events(client, events)
    kinds = Counter(events["event_type"])
    table = Table(title=f"responses to {len(sent):,} sends and {len(holdouts):,} holdouts", show_header=False)
    for kind in ("push_opened", "push_clicked", "converted", "unsubscribed", "purchase"):
        table.add_row(kind, f"{kinds.get(kind, 0):,}")
    table.add_row("posted to POST /v1/events", f"{totals['received']:,} ({totals['stored']:,} new)")
    out.print(table)


def _demo_trigger(settings: Any, campaign_id: str) -> str:
    """A follow-up to every purchase of the demo's day unless the buyer buys again within 24 hours:
    created through the API, started, and replayed slot by slot on the simulated clock through a
    real worker. At each step the purchases stored for it go to the trigger inbox, the worker's firing
    task plans them as of then (`fire_triggers_task(as_of)`), and the due-scan sends what is due;
    a purchase within the 24 hours cancels its buyer's planned follow-up (`condition_met`)."""
    from dispatch.control import control, flush_events
    from dispatch.replay import replay
    from features.event_store import EventStore
    from pushplan.db.store import PlanStore
    from pushplan.db.trigger_inbox import INBOX_COLUMNS, note_events, pending_count
    from serving.keys import Role, create_key
    from serving.tasks import fire_triggers_task
    from serving.triggers import trigger_status

    store = PlanStore(settings)
    day = store.get_campaign(campaign_id)
    assert day is not None  # the tour created it
    followup = followup_campaign(day.window.start)
    assert followup.trigger is not None
    reach = followup.window.end + followup.trigger.delay + followup.trigger.send_within
    purchases = EventStore(settings).read_events(
        list(INBOX_COLUMNS), start=followup.window.start, end=reach, event_types=["purchase"]
    )
    key = create_key(store, Role.campaign)
    with running_service(settings.data_dir, key) as service, service.client() as client:
        client.post("/v1/campaigns", json=followup.model_dump(mode="json")).raise_for_status()
    control(store, followup.campaign_id, "dispatch")
    fed = {"until": followup.window.start - timedelta(microseconds=1)}

    def feed_and_fire(moment: datetime) -> None:
        arrived = purchases[(purchases["timestamp"] > fed["until"]) & (purchases["timestamp"] <= moment)]
        fed["until"] = moment
        if note_events(store, arrived) == 0:
            return
        fire_triggers_task.apply_async(kwargs={"as_of": moment.isoformat()})
        deadline = time.monotonic() + 120
        while pending_count(store):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the worker did not fire the triggers of {moment:%Y-%m-%d %H:%M} in 120 s"
                )
            time.sleep(0.05)

    with running_worker(settings.data_dir.resolve()):
        # A step per send slot: each firing's slot comes up on time, so quiet hours and `unless`
        # are judged at the instant the send was planned for.
        step = timedelta(minutes=settings.slot_minutes)
        replay(store, settings, followup, step=step, before_step=feed_and_fire)
    flush_events(store, settings)
    shown = trigger_status(store, followup, now=reach)
    table = Table(title=f"{followup.campaign_id}: {followup.name}", show_header=False)
    table.add_row("trigger", "on purchase, 24 h later within 6 h, unless purchase; once a day per user")
    table.add_row("purchases replayed", f"{len(purchases):,} (the day and the 30 hours after it)")
    table.add_row("firings", f"{shown.firings:,}")
    for outcome, count in sorted(shown.by_outcome.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {outcome}", f"{count:,}")
    table.add_row("sent", f"{shown.sends:,} to {shown.users_sent:,} users")
    out.print(table)
    return followup.campaign_id


def followup_campaign(start: datetime) -> Campaign:
    """The tour's triggered campaign: a follow-up 24 hours after each purchase of the day from
    `start`, sent at the buyer's best time within 6 hours, unless they buy again first; 20 % held
    out to measure what it adds."""
    from pushplan.domain import Campaign

    return Campaign.model_validate(
        {
            "campaign_id": f"followup-{start:%Y%m%d}",
            "name": "Demo: after a purchase",
            "channels": ["sandbox"],
            "variants": [
                {"variant_id": "thanks", "title": "Thanks! 10% off your next order", "tags": ["discount"]},
                {"variant_id": "picks", "title": "Picked to go with your order", "tags": ["personal"]},
            ],
            "window": {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()},
            "holdout_fraction": 0.2,
            "exploration": 0.1,
            "trigger": {
                "on": "purchase",
                "delay": "PT24H",
                "send_within": "PT6H",
                "unless": ["purchase"],
                "once_per_user_days": 1,
            },
        }
    )


# The service and the worker as their own processes, and the demo's campaign (tests use them too).

# Who the demo's campaign is for (docs/audiences.md), and how long its plan job may take.
DEMO_AUDIENCE = 'lifecycle_stage in ("active", "sleeping")'
PLAN_JOB_WAIT_S = 600


@dataclass(frozen=True)
class RunningService:
    base_url: str
    api_key: str
    log: Path

    def client(self) -> httpx.Client:
        import httpx

        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key}, timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_service(data_dir: Path, api_key: str, ready_within_s: float = 120.0) -> Iterator[RunningService]:
    """`pushplan serve` on a free loopback port until the block ends; its log goes to a file."""
    port = free_port()
    log = data_dir / "serve.log"
    pushplan = Path(sys.executable).with_name("pushplan")
    command = [str(pushplan), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ))
    service = RunningService(f"http://127.0.0.1:{port}", api_key, log)
    try:
        _wait_ready(service, process, ready_within_s)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_worker(
    data_dir: Path, concurrency: int = 2, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`pushplan worker` as its own process until the block ends (a real Celery worker, not eager mode);
    its log goes to `<data_dir>/worker.log`."""
    log = data_dir / "worker.log"
    pushplan = Path(sys.executable).with_name("pushplan")
    command = [str(pushplan), "worker", "--concurrency", str(concurrency)]
    with log.open("a") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env or dict(os.environ)
        )
    try:
        yield process
    finally:
        process.terminate()  # Celery's warm shutdown: finishes the tasks it holds
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(service: RunningService, process: subprocess.Popen[bytes], within_s: float) -> None:
    import httpx

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}; see {service.log}")
        try:
            if httpx.get(f"{service.base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.25)
    raise RuntimeError(f"the service was not ready within {within_s:.0f} s; see {service.log}")


def demo_campaign(start: datetime, audience: str | None = None) -> Campaign:
    """Four titles of different kinds over one day, pushed, with a 10 % holdout and 10 % exploration,
    for `audience` (a rule) or every user."""
    from pushplan.domain import Campaign

    return Campaign.model_validate(
        {
            "campaign_id": f"demo-{start:%Y%m%d}",
            "name": "Demo: weekend picks",
            "channels": ["sandbox"],
            "variants": [
                {"variant_id": "discount", "title": "20% off your favourites today", "tags": ["discount"]},
                {"variant_id": "news", "title": "New arrivals just dropped", "tags": ["news"]},
                {"variant_id": "personal", "title": "We picked these for you", "tags": ["personal"]},
                {"variant_id": "question", "title": "Ready for more? 🎉", "tags": ["question", "emoji"]},
            ],
            "window": {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()},
            "holdout_fraction": 0.1,
            "exploration": 0.1,
            "audience": audience,
        }
    )


def plan_audience_through_api(service: RunningService, campaign: Campaign, now: datetime) -> pd.DataFrame:
    """Create the campaign, plan its audience with a plan job and read the items back, page by page."""
    import pandas as pd

    with service.client() as client:
        client.post("/v1/campaigns", json=campaign.model_dump(mode="json")).raise_for_status()
        created = client.post(
            f"/v1/campaigns/{campaign.campaign_id}/plan-jobs", json={"now": now.isoformat()}
        )
        created.raise_for_status()
        job = created.json()
        deadline = time.monotonic() + PLAN_JOB_WAIT_S
        while job["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            job = client.get(f"/v1/plan-jobs/{job['job_id']}").raise_for_status().json()
        if job["state"] != "done":
            raise RuntimeError(f"the plan job did not finish: {job}")
        items, after = [], None
        while True:
            params = {"limit": 1000} | ({"after": after} if after else {})
            page = client.get(f"/v1/campaigns/{campaign.campaign_id}/plan-items", params=params)
            items += page.raise_for_status().json()["items"]
            after = page.json()["next_after"]
            if after is None:
                return pd.DataFrame(items)
