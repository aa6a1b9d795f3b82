"""The event store's import: every kind of bad row is refused whole, with its place; re-imports store once."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from features.event_store import EventStore, ImportRefused
from features.schema import Kind
from pushplan.settings import Settings

EVENT_HEADER = [
    "event_id",
    "user_id",
    "event_type",
    "timestamp",
    "campaign_id",
    "variant_id",
    "channel",
    "value",
    "propensity",
]
USER_HEADER = [
    "user_id",
    "timezone",
    "country",
    "platform",
    "signup_at",
    "push_opt_in",
    "sms_opt_in",
    "email_opt_in",
    "tier",
]


def event_row(i: int, **changes: str) -> dict[str, str]:
    row = {
        "event_id": f"e{i}",
        "user_id": f"u{i % 7}",
        "event_type": "push_sent" if i % 2 else "app_open",
        "timestamp": f"2026-09-{1 + i % 28:02d}T{i % 24:02d}:15:00Z",
        "campaign_id": "c1" if i % 2 else "",
        "variant_id": "c1-a" if i % 2 else "",
        "channel": "push" if i % 2 else "",
        "value": "",
        "propensity": "0.25" if i % 2 else "",
    }
    row.update(changes)
    return row


def user_row(i: int, **changes: str) -> dict[str, str]:
    row = {
        "user_id": f"u{i}",
        "timezone": "Europe/Berlin",
        "country": "DE",
        "platform": "ios",
        "signup_at": "2026-01-05T10:00:00+01:00",
        "push_opt_in": "true",
        "sms_opt_in": "false",
        "email_opt_in": "",
        "tier": "gold",
    }
    row.update(changes)
    return row


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def store(settings: Settings) -> EventStore:
    return EventStore(settings)


@pytest.fixture
def stored(store: EventStore, tmp_path: Path) -> EventStore:
    """A store that already holds 20 events and 5 users, to show a refused file loses none of them."""
    store.import_file(write_csv(tmp_path / "base.csv", EVENT_HEADER, [event_row(i) for i in range(20)]))
    store.import_file(write_csv(tmp_path / "base_users.csv", USER_HEADER, [user_row(i) for i in range(5)]))
    return store


def test_events_are_stored_typed_in_utc_and_partitioned_by_date(store: EventStore, tmp_path: Path) -> None:
    rows = [event_row(1, timestamp="2026-09-01T23:30:00-02:00", value="12.5"), event_row(2)]
    result = store.import_file(write_csv(tmp_path / "events.csv", EVENT_HEADER, rows))

    assert (result.kind, result.rows, result.stored) == (Kind.events, 2, 2)
    events = store.read_events().set_index("event_id")
    assert events.loc["e1", "timestamp"] == pd.Timestamp("2026-09-02T01:30:00Z")
    assert events.loc["e1", "value"] == 12.5
    assert events.loc["e1", "propensity"] == 0.25
    assert pd.isna(events.loc["e2", "campaign_id"])
    assert sorted(p.name for p in store.events_dir.glob("event_date=*")) == [
        "event_date=2026-09-02",
        "event_date=2026-09-03",
    ]


def test_reimport_is_idempotent_and_overlaps_store_only_the_new(store: EventStore, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", EVENT_HEADER, [event_row(i) for i in range(10)])
    overlap = write_csv(tmp_path / "b.csv", EVENT_HEADER, [event_row(i) for i in range(5, 15)])

    assert store.import_file(first).stored == 10
    again = store.import_file(first)
    assert (again.stored, again.already_stored) == (0, 10)
    assert store.import_file(overlap).stored == 5
    assert store.stats().events == 15
    assert store.read_events(["event_id"])["event_id"].is_unique


def test_stats_count_users_events_types_and_span(stored: EventStore) -> None:
    stats = stored.stats().as_dict()
    assert stats["users"] == 5
    assert stats["events"] == 20
    assert stats["by_type"] == {"app_open": 10, "push_sent": 10}
    assert stats["first"] == "2026-09-01T00:15:00+00:00"
    assert stats["last"] == "2026-09-20T19:15:00+00:00"


def test_empty_store_has_zero_stats(store: EventStore) -> None:
    assert store.stats().as_dict() == {"users": 0, "events": 0, "by_type": {}, "first": None, "last": None}


BAD_EVENT_CELLS = [
    ("event_id", "", "is empty"),
    ("user_id", "  ", "is empty"),
    ("event_type", "push_bounced", "'push_bounced' is not one of pushplan's own events (opt_in, opt_out,"),
    ("event_type", "opt_outt", "app events may not begin push_ or opt_"),
    ("event_type", "Coupon Claimed", "'Coupon Claimed' is neither a built-in event nor an app event name"),
    ("event_type", "x" * 65, "is neither a built-in event nor an app event name"),
    ("timestamp", "", "is empty"),
    ("timestamp", "2026-09-03T10:00:00", "has no UTC offset"),
    ("timestamp", "2026-09-03", "has no UTC offset"),
    ("timestamp", "2026-09-03T10:00:00.123456+05:30x", "has no UTC offset"),
    ("timestamp", "yesterday 10:00+01:00", "is not an ISO 8601 timestamp"),
    ("timestamp", "2026-13-03T10:00:00Z", "is not an ISO 8601 timestamp"),
    ("channel", "pigeon", "'pigeon' is not one of email, push, sandbox, sms, webhook"),
    ("value", "12,50", "'12,50' is not a number"),
    ("value", "inf", "is not finite"),
    ("propensity", "0", "is not a probability in (0, 1]"),
    ("propensity", "1.5", "is not a probability in (0, 1]"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD_EVENT_CELLS)
def test_a_bad_event_cell_refuses_the_file_naming_row_column_and_reason(
    stored: EventStore, tmp_path: Path, column: str, value: str, reason: str
) -> None:
    before = stored.stats()
    rows = [event_row(i) for i in range(100, 110)]
    rows[6] = event_row(106, **{column: value})
    path = write_csv(tmp_path / "bad.csv", EVENT_HEADER, rows)

    with pytest.raises(ImportRefused) as refused:
        stored.import_file(path)

    message = str(refused.value)
    assert message.startswith(f"{path}: row 7, column {column!r}: ")
    assert reason in message
    assert "Nothing from this file was stored" in message
    assert stored.stats() == before
    assert not stored.settings.staging_dir.exists()


def test_duplicate_event_id_within_a_file_is_refused(stored: EventStore, tmp_path: Path) -> None:
    before = stored.stats()
    rows = [event_row(i) for i in range(100, 105)] + [event_row(102, user_id="u9")]
    path = write_csv(tmp_path / "dup.csv", EVENT_HEADER, rows)

    with pytest.raises(ImportRefused, match=r"row 6, column 'event_id': 'e102' repeats row 3"):
        stored.import_file(path)
    assert stored.stats() == before


def test_row_numbers_count_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHPLAN_IMPORT_CHUNK_ROWS", "1000")
    store = EventStore(Settings())
    rows = [event_row(i) for i in range(2500)]
    rows[2099] = event_row(2099, event_type="push_nope")
    rows[2400] = event_row(5, user_id="u1")  # repeats row 6 of the first chunk
    path = write_csv(tmp_path / "big.csv", EVENT_HEADER, rows)

    with pytest.raises(ImportRefused, match=r"row 2100, column 'event_type'"):
        store.import_file(path)
    rows[2099] = event_row(2099)
    write_csv(path, EVENT_HEADER, rows)
    with pytest.raises(ImportRefused, match=r"row 2401, column 'event_id': 'e5' repeats row 6"):
        store.import_file(path)
    assert store.stats().events == 0


def test_many_bad_rows_report_the_first_five_and_the_count(store: EventStore, tmp_path: Path) -> None:
    rows = [event_row(i, event_type="Bad") for i in range(30)]
    with pytest.raises(ImportRefused) as refused:
        store.import_file(write_csv(tmp_path / "all_bad.csv", EVENT_HEADER, rows))
    message = str(refused.value)
    assert "row 1, column 'event_type'" in message and "row 5, column 'event_type'" in message
    assert "row 6," not in message
    assert "30 bad rows in all; the first 5 shown" in message


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (["event_id", "user_id", "event_type"], "missing required column(s) 'timestamp'"),
        ([*EVENT_HEADER, "propensty"], "unknown column(s) 'propensty'"),
        (["name", "email"], "cannot tell users from events"),
    ],
)
def test_bad_headers_are_refused(stored: EventStore, tmp_path: Path, header: list[str], reason: str) -> None:
    before = stored.stats()
    path = tmp_path / "header.csv"
    path.write_text(",".join(header) + "\n" + ",".join("x" for _ in header) + "\n")
    with pytest.raises(ImportRefused) as refused:
        stored.import_file(path)
    assert reason in str(refused.value)
    assert stored.stats() == before


def test_unparseable_and_missing_files_are_refused(store: EventStore, tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(",".join(EVENT_HEADER) + "\n" + ",".join(event_row(1).values()) + ",extra\n")
    with pytest.raises(ImportRefused, match="cannot be parsed"):
        store.import_file(ragged)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ImportRefused, match="the file is empty"):
        store.import_file(empty)
    with pytest.raises(ImportRefused, match="no such file"):
        store.import_file(tmp_path / "absent.csv")
    assert store.stats().events == 0


def test_parquet_with_naive_timestamps_is_refused(store: EventStore, tmp_path: Path) -> None:
    frame = pd.DataFrame([event_row(i) for i in range(3)])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"].str.rstrip("Z"))
    frame.to_parquet(tmp_path / "naive.parquet")
    with pytest.raises(ImportRefused, match=r"row 1, column 'timestamp': has no time zone"):
        store.import_file(tmp_path / "naive.parquet")


def test_parquet_with_typed_columns_imports(store: EventStore, tmp_path: Path) -> None:
    frame = pd.DataFrame([event_row(i) for i in range(4)])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_convert("Asia/Tokyo")
    frame["propensity"] = pd.to_numeric(frame["propensity"])
    frame["value"] = pd.to_numeric(frame["value"])
    frame.to_parquet(tmp_path / "typed.parquet")
    assert store.import_file(tmp_path / "typed.parquet").stored == 4
    assert store.read_events(["timestamp"])["timestamp"].min() == pd.Timestamp("2026-09-01T00:15:00Z")


def test_a_crash_while_moving_files_in_is_completed_by_reimport(
    store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "events.csv", EVENT_HEADER, [event_row(i) for i in range(60)])
    real_replace = Path.replace
    moves = {"n": 0}

    def dying_replace(self: Path, target: Path) -> Path:
        moves["n"] += 1
        if moves["n"] == 3:
            raise OSError("disk unplugged")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", dying_replace)
    with pytest.raises(OSError, match="disk unplugged"):
        store.import_file(path)
    monkeypatch.setattr(Path, "replace", real_replace)
    partial = store.stats().events
    assert 0 < partial < 60

    store.import_file(path)
    events = store.read_events(["event_id"])
    assert len(events) == 60 and events["event_id"].is_unique


def test_users_are_validated_kept_with_attributes_and_upserted(store: EventStore, tmp_path: Path) -> None:
    rows = [user_row(1), user_row(2, timezone="", push_opt_in="No", sms_opt_in="YES")]
    result = store.import_file(write_csv(tmp_path / "users.csv", USER_HEADER, rows))
    assert (result.kind, result.stored) == (Kind.users, 2)

    users = store.read_users().set_index("user_id")
    assert users.loc["u2", "timezone"] == "UTC"
    assert (users.loc["u2", "push_opt_in"], users.loc["u2", "sms_opt_in"]) == (False, True)
    assert users.loc["u1", "tier"] == "gold"
    assert users.loc["u1", "signup_at"] == pd.Timestamp("2026-01-05T09:00:00Z")

    assert store.import_file(tmp_path / "users.csv").stored == 0
    changed = write_csv(tmp_path / "changed.csv", USER_HEADER, [user_row(2, push_opt_in="true"), user_row(3)])
    assert store.import_file(changed).stored == 2
    users = store.read_users().set_index("user_id")
    assert len(users) == 3 and bool(users.loc["u2", "push_opt_in"])


BAD_USER_CELLS = [
    ("user_id", "", "is empty"),
    ("timezone", "Mars/Olympus", "'Mars/Olympus' is not an IANA time zone name"),
    ("timezone", "CEST", "'CEST' is not an IANA time zone name"),
    ("push_opt_in", "maybe", "'maybe' is not true or false"),
    ("push_opt_in", "", "is empty"),
    ("signup_at", "2026-01-05 10:00", "'2026-01-05 10:00' has no UTC offset"),
    ("signup_at", "2026-01-05", "'2026-01-05' has no UTC offset"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD_USER_CELLS)
def test_a_bad_user_cell_refuses_the_file(
    stored: EventStore, tmp_path: Path, column: str, value: str, reason: str
) -> None:
    before_users = stored.read_users()
    rows = [user_row(i) for i in range(10, 14)]
    rows[2] = user_row(12, **{column: value})
    path = write_csv(tmp_path / "bad_users.csv", USER_HEADER, rows)

    with pytest.raises(ImportRefused) as refused:
        stored.import_file(path, Kind.users)
    assert f"row 3, column {column!r}: {reason}" in str(refused.value)
    pd.testing.assert_frame_equal(stored.read_users(), before_users)


def test_duplicate_user_ids_are_refused(store: EventStore, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dup_users.csv", USER_HEADER, [user_row(1), user_row(2), user_row(1)])
    with pytest.raises(ImportRefused, match=r"row 3, column 'user_id': 'u1' repeats row 1"):
        store.import_file(path)
    assert store.stats().users == 0


def test_read_events_filters_by_time_and_type(stored: EventStore) -> None:
    chosen = stored.read_events(
        ["event_id", "event_type"],
        start=pd.Timestamp("2026-09-05T00:00:00Z").to_pydatetime(),
        end=pd.Timestamp("2026-09-10T00:00:00Z").to_pydatetime(),
        event_types=["push_sent"],
    )
    assert set(chosen["event_type"]) == {"push_sent"}
    assert sorted(chosen["event_id"]) == ["e5", "e7"]


def test_app_events_with_properties_are_stored_read_and_named(store: EventStore, tmp_path: Path) -> None:
    """An app's own event (`coupon_claimed`) is stored with its properties as compact JSON, is
    listed among the names rules may use, and an older file without the column reads as no properties."""
    old = write_csv(tmp_path / "old.csv", EVENT_HEADER, [event_row(1)])
    store.import_file(old)
    rows = [
        {
            "event_id": "c1",
            "user_id": "u1",
            "event_type": "coupon_claimed",
            "timestamp": "2026-09-02T10:00:00Z",
            "properties": '{ "code": "WELCOME10", "amount": 10, "first": true }',
        },
        {
            "event_id": "c2",
            "user_id": "u2",
            "event_type": "signup",
            "timestamp": "2026-09-02T11:00:00+02:00",
            "properties": "",
        },
    ]
    new = write_csv(
        tmp_path / "new.csv", ["event_id", "user_id", "event_type", "timestamp", "properties"], rows
    )

    assert store.import_file(new).stored == 2
    events = store.read_events(["event_id", "event_type", "properties"]).set_index("event_id")
    assert events.loc["c1", "properties"] == '{"amount":10,"code":"WELCOME10","first":true}'
    assert events.loc["c2", "properties"] is None and events.loc["e1", "properties"] is None
    assert store.custom_event_names() == {"coupon_claimed", "signup"}
    assert store.stats().by_type["coupon_claimed"] == 1


BAD_PROPERTIES = [
    ("[1, 2]", "must be a JSON object, not list"),
    ("{amount: 1}", "is not JSON"),
    ('{"cart": {"items": 2}}', "'cart' is a dict: values are text, numbers, true/false or null"),
    ('{"total amount": 2}', "key 'total amount' is not a name"),
    ('{"note": "' + "x" * 2100 + '"}', "bytes as JSON, more than 2048"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_PROPERTIES)
def test_bad_properties_refuse_the_file(store: EventStore, tmp_path: Path, value: str, reason: str) -> None:
    rows = [
        {
            "event_id": f"c{i}",
            "user_id": "u1",
            "event_type": "add_to_cart",
            "timestamp": "2026-09-02T10:00:00Z",
            "properties": value if i == 2 else '{"items": 1}',
        }
        for i in range(4)
    ]
    path = write_csv(
        tmp_path / "bad.csv", ["event_id", "user_id", "event_type", "timestamp", "properties"], rows
    )

    with pytest.raises(ImportRefused) as refused:
        store.import_file(path)

    assert "row 3, column 'properties': " in str(refused.value) and reason in str(refused.value)
    assert store.stats().events == 0 and store.custom_event_names() == set()
