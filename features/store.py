"""The feature store as training and serving use it: Feast configured from pushplan's settings.

- `feature_store(settings)`: a Feast FeatureStore for the profile (SQLite or Redis online store).
- `apply`, `materialize`: register the repo's declarations; load the latest snapshots online.
- `training_set(...)`: point-in-time-correct features for (user_id, event_timestamp) rows.
- `online_features(...)`: features for one user or a whole audience in one bulk read.
- `push_events(...)`: fold new sends and clicks into the online fatigue features.

Users the store has never seen (cold start) get `defaults(...)`: the population's by-hour shares
and tag click rates as of the last build, zero counts and a 'new' lifecycle; never an error.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore, FeatureView, RepoConfig
from feast.data_source import PushMode
from feast.types import Array, Bytes, Float32, Float64, String

from features.columns import (
    Columns,
    Kind,
    from_arrow,
    from_python,
    instants,
    length,
    missing,
    numbers,
    of_frame,
    texts,
    to_frame,
    vectors,
)
from features.feature_repo import definitions
from features.feature_repo.transforms import epoch_seconds, request_context_arrays
from features.tables import HABIT_VECTORS, TABLES, table_path
from pushplan.domain import VARIANT_TAGS, EventType
from pushplan.settings import Profile, Settings

REPO_DIR = Path(definitions.__file__).parent
SERVICES = tuple(service.name for service in definitions.FEATURE_SERVICES)
# The stored views the request-context transform reads.
_CONTEXT_VIEWS = (
    definitions.user_engagement_fv,
    definitions.user_fatigue_fv,
    definitions.user_tag_affinity_fv,
)
REQUEST_FIELDS = tuple(field.name for field in definitions.campaign_request.schema)
_STORED_VIEWS = tuple(obj for obj in definitions.REPO_OBJECTS if isinstance(obj, FeatureView))


def feast_redis_connection(url: str) -> str:
    """Feast's Redis form, `host:port,db=N[,password=…][,ssl=true]`, of a redis:// URL."""
    from redis.connection import parse_url

    parts = parse_url(url)
    pieces = [f"{parts.get('host', '127.0.0.1')}:{parts.get('port', 6379)}", f"db={parts.get('db', 0)}"]
    if parts.get("password"):
        pieces.append(f"password={parts['password']}")
    if parts.get("username"):
        pieces.append(f"username={parts['username']}")
    if url.startswith("rediss://"):
        pieces.append("ssl=true")
    return ",".join(pieces)


def _quiet_feast() -> None:
    """Feast and ibis warn about their own internals on every call, and Feast's import resets the
    filters to "once"; users can do nothing about these, so they are silenced after Feast loads."""
    warnings.filterwarnings("ignore", message=".*fetch_arrow_table", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", message="On demand feature view is an experimental", category=RuntimeWarning
    )


def feature_store(settings: Settings) -> FeatureStore:
    """The profile's Feast store; relative source paths resolve under `<data_dir>/feast`.

    One store per configuration and process, reused (the last few configurations are kept): a
    FeatureStore holds the registry it read, Feast's cache of resolved feature references and the
    online store's connection, so building one per request cost a registry read, a new Redis
    connection and Feast's feature resolution on every call. As for any long-lived Feast store,
    registry changes made by another process (`features apply`) are seen within Feast's registry
    cache ttl (600 s); feature values are read from the stores on every call, never cached.
    """
    _quiet_feast()
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    production = settings.profile is Profile.production
    yaml_file = REPO_DIR / ("feature_store.production.yaml" if production else "feature_store.yaml")
    values = {
        "PUSHPLAN_FEAST_DIR": str(settings.feast_dir.resolve()),
        "PUSHPLAN_FEAST_PROJECT": settings.feast_project,
        "PUSHPLAN_FEAST_REDIS": feast_redis_connection(settings.redis_url) if settings.redis_url else "",
    }
    key = (str(yaml_file), json.dumps(values, sort_keys=True))
    with _STORES_LOCK:
        if key in _STORES:
            _STORES.move_to_end(key)
            return _STORES[key]
        # The same ${VAR} syntax Feast expands from the environment, filled from settings instead, so
        # that building a store never depends on (or changes) the process environment.
        raw = yaml.safe_load(Template(yaml_file.read_text()).substitute(values))
        config = RepoConfig(**raw)
        config.repo_path = settings.feast_dir.resolve()
        store = FeatureStore(repo_path=str(settings.feast_dir.resolve()), config=config)
        _STORES[key] = store
        while len(_STORES) > _KEPT_STORES:
            _STORES.popitem(last=False)
        return store


_KEPT_STORES = 4
_STORES: OrderedDict[tuple[str, str], FeatureStore] = OrderedDict()
_STORES_LOCK = threading.Lock()


def apply(store: FeatureStore, settings: Settings) -> list[str]:
    """Register the repo's entity, sources, views and services; returns the names applied."""
    for source in definitions.TABLE_SOURCES:
        source.file_options.uri = str(table_path(settings, source.name.removesuffix("_source")).resolve())
    store.apply(definitions.REPO_OBJECTS)
    return [getattr(obj, "name", "") for obj in definitions.REPO_OBJECTS]


def snapshot_span(settings: Settings) -> tuple[datetime, datetime]:
    """First and last snapshot instants in the built tables."""
    path = table_path(settings, TABLES[0])
    if not path.exists():
        raise FileNotFoundError("no feature tables yet: run `pushplan features build` first")
    stamps = pq.read_table(path, columns=["event_timestamp"]).column("event_timestamp").to_pandas()
    return stamps.min().to_pydatetime(), stamps.max().to_pydatetime()


def materialize(store: FeatureStore, settings: Settings) -> tuple[datetime, datetime]:
    """Load the latest snapshot of every user into the online store, incrementally after the first run.

    Feast's own incremental start for a view never materialized is "now - ttl", which would skip
    history older than the ttl; the first run therefore starts at the first snapshot. So does the
    first run after `features build` rewrote the tables: Feast tracks materialized time ranges,
    not table contents, and would otherwise keep serving the old build's values.
    """
    first, last = snapshot_span(settings)
    end = last + timedelta(seconds=1)
    views = [view.name for view in store.list_feature_views()]
    fresh = any(not store.get_feature_view(name).materialization_intervals for name in views)
    marker = settings.feast_dir / "materialized.json"
    seen = json.loads(marker.read_text()) if marker.exists() else {}
    target = f"{store.project}/{store.config.online_store.type}"
    build = max(table_path(settings, name).stat().st_mtime_ns for name in TABLES)
    if fresh or seen.get(target) != build:
        start = first - timedelta(seconds=1)
        store.materialize(start_date=start, end_date=end)
        marker.write_text(json.dumps({**seen, target: build}) + "\n")
        return start, end
    previous = max(
        interval[1] for name in views for interval in store.get_feature_view(name).materialization_intervals
    )
    if previous >= end:
        return previous, previous
    store.materialize_incremental(end_date=end)
    return previous, end


def defaults(settings: Settings) -> dict[str, Any]:
    """Values for users without stored features (written by `features build`)."""
    path = defaults_path(settings)
    base: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    uniform = [1.0 / 24] * 24
    return {
        "timezone": settings.default_timezone,
        "country": None,
        "platform": None,
        "push_opt_in": False,
        "sms_opt_in": False,
        "email_opt_in": False,
        "days_since_signup": 0.0,
        "activity_by_hour": base.get("activity_by_hour", uniform),
        "activity_by_hour_weekend": base.get("activity_by_hour_weekend", uniform),
        "push_engagement_by_hour": base.get("push_engagement_by_hour", uniform),
        "weekend_activity_share": math.nan,
        "activity_events": 0.0,
        "push_engagements": 0.0,
        "recency_days": math.nan,
        "frequency_90d": 0.0,
        "monetary_90d": 0.0,
        "r_score": 0,
        "f_score": 0,
        "m_score": 0,
        "rfm_segment": "no_purchase",
        "rfm_cell": "no_purchase",
        "days_since_active": math.nan,
        "lifecycle_stage": "new",
        "sends_1d": 0.0,
        "sends_7d": 0.0,
        "sends_30d": 0.0,
        "clicks_1d": 0.0,
        "clicks_7d": 0.0,
        "clicks_30d": 0.0,
        "last_push_epoch_s": math.nan,
        "last_click_epoch_s": math.nan,
        **{f"affinity_{tag}": base.get(f"affinity_{tag}", 0.0) for tag in VARIANT_TAGS},
        "tagged_sends": 0.0,
        **{column: [0.0] * 24 for column in HABIT_VECTORS},
        "habit_events": 0.0,
    }


def defaults_path(settings: Settings) -> Path:
    return settings.feast_dir / "defaults.json"


def write_defaults(settings: Settings) -> dict[str, Any]:
    """The population's view as of the last snapshot: what a user without history is assumed to be."""
    engagement = pd.read_parquet(table_path(settings, "user_engagement"))
    affinity = pd.read_parquet(table_path(settings, "user_tag_affinity"))
    latest = engagement["event_timestamp"].max()
    now = engagement[engagement["event_timestamp"] == latest]
    tastes = affinity[affinity["event_timestamp"] == latest]
    values: dict[str, Any] = {
        column: np.mean(np.stack(now[column].to_numpy()), axis=0).round(6).tolist()
        for column in ("activity_by_hour", "activity_by_hour_weekend", "push_engagement_by_hour")
    }
    no_sends = tastes[tastes["tagged_sends"] == 0]
    reference = no_sends if not no_sends.empty else tastes
    for tag in VARIANT_TAGS:
        values[f"affinity_{tag}"] = round(float(reference[f"affinity_{tag}"].median()), 6)
    defaults_path(settings).write_text(json.dumps(values, indent=2) + "\n")
    return values


def fill_cold(columns: Columns, names: Sequence[str], settings: Settings) -> Columns:
    """Cold start: rows with no stored value at all among `names` (a user never built) take the
    defaults in those columns; returns a new Columns (the arrays it changes are copies).

    A user with features keeps their own values, NaN included (a NaN recency means "never bought").
    """
    out = dict(columns)
    present = [name for name in names if name in columns]
    n = length(columns)
    if not present or not n:
        return out
    cold = np.ones(n, dtype=bool)
    for name in present:
        cold &= missing(columns[name])
        if not cold.any():
            return out
    known = _defaults_cached(settings)
    for name in present:
        if name not in known:
            continue
        values = columns[name].copy()
        default = known[name]
        if values.ndim == 2:
            values[cold] = np.asarray(default, dtype=values.dtype)
        elif values.dtype == object:
            for row in np.flatnonzero(cold):
                values[row] = default
        else:
            values[cold] = np.nan if default is None else float(default)
        out[name] = values
    return out


def _defaults_cached(settings: Settings) -> dict[str, Any]:
    """`defaults`, read again only when `features build` rewrote the file (a plan must not parse it
    per request)."""
    path = defaults_path(settings)
    stamp = path.stat().st_mtime_ns if path.exists() else 0
    key = (str(path), settings.default_timezone)
    cached = _DEFAULTS.get(key)
    if cached is None or cached[0] != stamp:
        cached = (stamp, defaults(settings))
        _DEFAULTS[key] = cached
    return cached[1]


_DEFAULTS: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}


@dataclass(frozen=True)
class _ServiceShape:
    """What a feature service reads and returns, resolved once per store (services never change:
    a change of features is a new service version)."""

    names: tuple[str, ...]  # the service's features, in its order
    stored: tuple[str, ...]  # "view:feature" refs to read: its own and all its request-time view reads
    needs_request: bool


# Per store: resolving a service from the registry costs milliseconds (Feast rebuilds and
# type-checks every field), and without the registry cache it re-reads the registry file, which
# also resets Feast's own feature-resolution cache; an online read must not pay that each time.
_SHAPES: weakref.WeakKeyDictionary[FeatureStore, dict[str, _ServiceShape]] = weakref.WeakKeyDictionary()


def _shape(store: FeatureStore, service: str) -> _ServiceShape:
    shapes = _SHAPES.setdefault(store, {})
    if service not in shapes:
        projections = store.get_feature_service(service, allow_cache=True).feature_view_projections
        needs_request = any(p.name == definitions.request_context.name for p in projections)
        refs = [
            f"{projection.name}:{field.name}"
            for projection in projections
            if projection.name != definitions.request_context.name
            for field in projection.features
        ]
        if needs_request:
            refs = [f"{view.name}:{field.name}" for view in _CONTEXT_VIEWS for field in view.features] + refs
        shapes[service] = _ServiceShape(
            names=tuple(field.name for projection in projections for field in projection.features),
            stored=tuple(dict.fromkeys(refs)),
            needs_request=needs_request,
        )
    return shapes[service]


def kinds(store: FeatureStore) -> dict[str, Kind]:
    """Each stored feature's Columns kind, from the repo's declared types (resolved once per store)."""
    found = _KINDS.get(store)
    if found is None:
        found = {}
        for view in _STORED_VIEWS:
            for field in view.features:
                found[field.name] = _kind(field.dtype)
        _KINDS[store] = found
    return found


def _kind(dtype: Any) -> Kind:
    if isinstance(dtype, Array):
        return "vector" if dtype.base_type in (Float32, Float64) else "list"
    if dtype in (String, Bytes):
        return "text"
    return "number"


_KINDS: weakref.WeakKeyDictionary[FeatureStore, dict[str, Kind]] = weakref.WeakKeyDictionary()


def service_feature_names(store: FeatureStore, service: str) -> list[str]:
    return list(_shape(store, service).names)


def _needs_request(store: FeatureStore, service: str) -> bool:
    return _shape(store, service).needs_request


def stored_refs(store: FeatureStore, service: str) -> list[str]:
    """The stored features to read for a service: its own, and all that its request-time view reads."""
    return list(_shape(store, service).stored)


def finish(store: FeatureStore, settings: Settings, service: str, rows: Columns, stored: Columns) -> Columns:
    """A service's features from the stored values (at least the service's `stored_refs`) and the
    request `rows`: cold-start defaults filled, then the request-time features computed on the
    filled values; `rows`' columns first, then the service's, in its order.

    Running the on-demand transform here, rather than inside Feast on raw nulls, gives a cold-start
    user request features from the defaults too; for users with features both give the same
    numbers (tests/integration/test_feature_store.py holds them equal).
    """
    filled = fill_cold(stored, _names(stored_refs(store, service)), settings)
    if _needs_request(store, service):
        filled.update(request_context_arrays({**filled, **rows}))
    return {**rows, **{name: filled[name] for name in service_feature_names(store, service)}}


def online_features(
    store: FeatureStore,
    settings: Settings,
    service: str,
    user_ids: list[str],
    request: pd.DataFrame | dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per user id with the service's features, read in one call however many users.

    Services with the request-context view need `request`: a dict applied to every row, or a frame
    with one row per user, holding REQUEST_FIELDS. Cold-start users get defaults.
    """
    stored = read_columns(store, user_ids, stored_refs(store, service))
    return to_frame(service_columns(store, settings, service, user_ids, stored, request))


def request_columns(
    store: FeatureStore,
    service: str,
    user_ids: Sequence[str],
    request: pd.DataFrame | Mapping[str, Any] | None,
) -> Columns:
    """user_id, and the request fields a service needs: from a dict applied to every row, a frame
    or Columns with one row per user."""
    n = len(user_ids)
    rows: Columns = {"user_id": texts(user_ids)}
    if isinstance(request, pd.DataFrame):
        rows.update(of_frame(request.reset_index(drop=True)))
    elif request is not None:
        for name, value in request.items():
            if isinstance(value, np.ndarray) and value.shape[:1] == (n,):
                rows[name] = value
            elif isinstance(value, datetime | pd.Timestamp):
                rows[name] = instants(value, n)
            elif isinstance(value, str) or value is None:
                rows[name] = texts([value] * n)
            else:
                rows[name] = np.full(n, value, dtype=np.float64)
    _require_request(store, service, rows)
    return rows


def _require_request(store: FeatureStore, service: str, present: Collection[str]) -> None:
    """A service with the request-context view refuses rows without every REQUEST_FIELDS field."""
    if _needs_request(store, service):
        absent = [name for name in REQUEST_FIELDS if name not in present]
        if absent:
            raise ValueError(f"{service} needs request context: {', '.join(absent)}")


Source = Literal["online", "offline"]


def read_columns(
    store: FeatureStore,
    user_ids: list[str],
    refs: Sequence[str],
    *,
    source: Source = "online",
    at: datetime | None = None,
) -> Columns:
    """The stored values of `refs` ("view:feature") for many users in ONE read: one row per user
    id in their order, one column per feature name, raw (a user without values has NaN/None).

    `online`: one Feast `get_online_features` call (what materialization and pushes wrote).
    `offline`: Feast's offline store as of `at` (the latest snapshot at or before it, within the
    views' ttl), Feast's way of scoring a whole audience without millions of online reads; pushes
    made between builds are not in it.
    """
    refs = list(dict.fromkeys(refs))
    if source == "online":
        read = store.get_online_features(
            features=refs, entity_rows=[{"user_id": u} for u in user_ids]
        ).to_dict()
        kind = kinds(store)
        return {name: from_python(read[name], kind.get(name, "text")) for name in _names(refs)}
    if source != "offline":
        raise ValueError(f"source must be 'online' or 'offline', not {source!r}")
    if at is None:
        raise ValueError("an offline read needs `at`, the instant to read the features as of")
    return _latest_offline(store, user_ids, refs, at)


def read_stored(
    store: FeatureStore,
    user_ids: list[str],
    refs: Sequence[str],
    *,
    source: Source = "online",
    at: datetime | None = None,
) -> pd.DataFrame:
    """`read_columns` as a frame (notebooks, reports)."""
    return to_frame(read_columns(store, user_ids, refs, source=source, at=at))


def _latest_offline(store: FeatureStore, user_ids: list[str], refs: list[str], at: datetime) -> Columns:
    """Each view's latest row per user in (at - ttl, at], from Feast's offline store, in users' order.

    This is the offline store's `pull_latest_from_table_or_query`, the read materialization makes,
    as of `at` instead of into the online store: what `get_historical_features` gives for entity
    rows all stamped `at`, without a point-in-time join over one row per user (for a million users
    that join took 57 s and 3.5 GiB on 2 cores; this read, a few seconds).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    offline = get_offline_store_from_config(store.config.offline_store)
    moment = pd.Timestamp(at)
    moment = (
        moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    ).to_pydatetime()
    wanted = pa.array(list(user_ids), type=pa.string())
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        view_name, name = ref.split(":", 1)
        by_view.setdefault(view_name, []).append(name)
    columns: Columns = {}
    kind = kinds(store)
    reads = [
        (view_name, group)
        for view_name, view_names in by_view.items()
        for group in _one_vector_each(view_names, kind)
    ]
    for view_name, names in reads:
        feature_view = store.get_feature_view(view_name, allow_registry_cache=True)
        source = feature_view.batch_source
        if source is None:
            raise ValueError(f"feature view {view_name} has no batch source to read offline")
        ttl = feature_view.ttl if feature_view.ttl else timedelta(days=365 * 100)
        table = offline.pull_latest_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=["user_id"],
            feature_name_columns=names,
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            start_date=moment - ttl,
            end_date=moment,
        ).to_arrow()
        keys = table.column("user_id").cast(pa.string())
        rows = pc.index_in(wanted, value_set=keys)  # null where the user has no row
        # Column by column, and the view's table let go before the next is read: a million users'
        # 24-hour vectors are hundreds of MB in Arrow, again as numpy, and must not all coexist.
        for name in names:
            columns[name] = from_arrow(table.column(name).take(rows), kind.get(name, "text"))
        del table, keys, rows
    return {name: columns[name] for name in _names(refs)}


def _one_vector_each(names: list[str], kind: dict[str, Kind]) -> list[list[str]]:
    """A view's features in groups of at most one 24-hour vector (the scalars ride with the first):
    the offline store's latest-per-user query holds every snapshot in the ttl of what it reads, and
    for a million users a view's five vectors at once peaked at 2.6 GB; one at a time, at a fifth,
    for a second or two more per vector (columnar files: each query reads only its columns)."""
    vectors_ = [name for name in names if kind.get(name) == "vector"]
    rest = [name for name in names if kind.get(name) != "vector"]
    if len(vectors_) <= 1:
        return [names]
    return [rest + vectors_[:1], *([name] for name in vectors_[1:])]


def service_columns(
    store: FeatureStore,
    settings: Settings,
    service: str,
    user_ids: Sequence[str],
    stored: Columns,
    request: pd.DataFrame | Mapping[str, Any] | None = None,
) -> Columns:
    """A service's features for the users of a `read_columns` read that holds (at least) the
    service's stored features: several services share one read."""
    return finish(store, settings, service, request_columns(store, service, user_ids, request), stored)


def service_features(
    store: FeatureStore,
    settings: Settings,
    service: str,
    user_ids: list[str],
    stored: pd.DataFrame,
    request: pd.DataFrame | dict[str, Any] | None = None,
) -> pd.DataFrame:
    """`service_columns` of a `read_stored` frame, as a frame."""
    return to_frame(service_columns(store, settings, service, user_ids, of_frame(stored), request))


def _names(refs: Sequence[str]) -> list[str]:
    return [ref.split(":", 1)[1] for ref in refs]


def training_set(
    store: FeatureStore, settings: Settings, service: str, entity_rows: pd.DataFrame
) -> pd.DataFrame:
    """Point-in-time-correct features for (user_id, event_timestamp[, request fields]) rows.

    Each row sees the latest daily snapshot stamped at or before its timestamp, so nothing that
    happened later leaks in. Users without a snapshot yet get the cold-start defaults.
    """
    if "event_timestamp" not in entity_rows or "user_id" not in entity_rows:
        raise ValueError("entity rows need user_id and event_timestamp columns")
    rows = entity_rows.reset_index(drop=True).copy()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    _require_request(store, service, rows.columns)
    # Only keys, time and request fields go to Feast (other columns, labels for one, ride along
    # here); Feast does not promise the rows' order back, so a row number restores it.
    keys = ["user_id", "event_timestamp", *(REQUEST_FIELDS if _needs_request(store, service) else ())]
    joined = store.get_historical_features(
        entity_df=rows[keys].assign(_row=np.arange(len(rows))), features=stored_refs(store, service)
    ).to_df()
    joined = joined.sort_values("_row").reset_index(drop=True)
    stored = of_frame(joined.drop(columns=[*keys, "_row"]))
    kind = kinds(store)
    for name, values in stored.items():  # a column Feast left all-null has no type of its own
        if kind.get(name) == "number" and values.dtype == object:
            stored[name] = numbers(values)
        elif kind.get(name) == "vector" and values.ndim == 1:
            stored[name] = vectors(list(values))
    request = of_frame(rows[list(REQUEST_FIELDS)]) if _needs_request(store, service) else {}
    finished = finish(store, settings, service, request, stored)
    features = to_frame({name: finished[name] for name in service_feature_names(store, service)})
    return pd.concat([rows, features], axis=1)


PROFILE_COLUMNS = ("timezone", "push_opt_in", "sms_opt_in", "email_opt_in")


PROFILE_REFS = tuple(f"{definitions.user_profile_fv.name}:{name}" for name in PROFILE_COLUMNS)


def profile_columns(settings: Settings, user_ids: Sequence[str], stored: Columns) -> Columns:
    """user_id, time zone and opt-ins of many users from a `read_columns` read that holds (at
    least) the PROFILE_COLUMNS (cold start: the default zone, not opted in); opt-ins as booleans."""
    filled = fill_cold(stored, PROFILE_COLUMNS, settings)
    zones = filled["timezone"].copy()
    zones[missing(zones)] = settings.default_timezone
    out: Columns = {"user_id": texts(user_ids), "timezone": zones}
    for column in PROFILE_COLUMNS[1:]:
        out[column] = np.nan_to_num(numbers(filled[column])) > 0
    return out


def profile_frame(settings: Settings, user_ids: list[str], stored: pd.DataFrame) -> pd.DataFrame:
    """`profile_columns` of a `read_stored` frame, as a frame."""
    return to_frame(profile_columns(settings, user_ids, of_frame(stored)))


def push_events(store: FeatureStore, settings: Settings, events: pd.DataFrame) -> int:
    """Fold push_sent and push_clicked events into the online fatigue features; returns users updated.

    The daily build recomputes these exactly; between builds this keeps the counts that caps and
    the click model read from going stale. Counts over 1/7/30 days only grow here until the next
    build re-bases them.
    """
    relevant = events[events["event_type"].isin([EventType.push_sent.value, EventType.push_clicked.value])]
    if relevant.empty:
        return 0
    users = sorted(set(relevant["user_id"]))
    refs = [f"user_fatigue:{field.name}" for field in definitions.user_fatigue_fv.features]
    current = to_frame(
        fill_cold(read_columns(store, users, refs), _names(refs), settings), index=pd.Index(users)
    )
    current.index.name = "user_id"
    epoch = pd.Series(epoch_seconds(relevant["timestamp"]), index=relevant.index)
    for kind, count_columns, last_column in (
        (EventType.push_sent.value, ("sends_1d", "sends_7d", "sends_30d"), "last_push_epoch_s"),
        (EventType.push_clicked.value, ("clicks_1d", "clicks_7d", "clicks_30d"), "last_click_epoch_s"),
    ):
        mask = (relevant["event_type"] == kind).to_numpy()
        if not mask.any():
            continue
        per_user = relevant[mask].groupby("user_id").size()
        latest = epoch[mask].groupby(relevant.loc[mask, "user_id"]).max()
        for column in count_columns:
            current.loc[per_user.index, column] = current.loc[per_user.index, column].astype(float) + per_user
        previous = current.loc[latest.index, last_column].astype(float).fillna(-math.inf)
        current.loc[latest.index, last_column] = np.maximum(previous, latest)
    pushed = current.reset_index()
    pushed["event_timestamp"] = datetime.now(UTC)
    for field in definitions.user_fatigue_fv.features:
        pushed[field.name] = pd.to_numeric(pushed[field.name], errors="coerce").astype(
            "float64" if field.name.endswith("epoch_s") else "float32"
        )
    store.push(definitions.user_fatigue_push_source.name, pushed, to=PushMode.ONLINE)
    return len(users)
