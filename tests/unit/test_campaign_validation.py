"""Campaign input refused at creation, never at send time: control characters in variant ids,
titles and bodies, texts longer than a channel takes, and a new spec for a campaign already sending."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.domain import CHANNEL_TEXT_LIMITS, Campaign, Channel
from pushplan.settings import Settings
from serving.app import create_app
from serving.keys import Role, create_key

WINDOW = {"start": "2026-10-06T00:00:00Z", "end": "2026-10-08T00:00:00Z"}


def spec(*variants: dict[str, Any], channels: tuple[str, ...] = ("push",)) -> dict[str, Any]:
    return {
        "campaign_id": "bf",
        "name": "Black Friday",
        "channels": list(channels),
        "variants": [{"variant_id": "a", "title": "Save 30% today"}, *variants],
        "window": WINDOW,
    }


def refusal(body: dict[str, Any]) -> tuple[tuple[int | str, ...], str]:
    """Where and why the campaign is refused: its one error's location and message."""
    with pytest.raises(ValidationError) as refused:
        Campaign.model_validate(body)
    (error,) = refused.value.errors()
    return error["loc"], error["msg"].removeprefix("Value error, ")


CONTROLS = ["\x00", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]


@pytest.mark.parametrize("char", CONTROLS)
@pytest.mark.parametrize("field", ["variant_id", "title"])
def test_a_control_character_in_a_variant_id_or_title_is_refused_naming_where(char: str, field: str) -> None:
    variant = {"variant_id": "b", "title": "Hello", field: f"Last{char}call"}
    loc, message = refusal(spec(variant))
    named = "b" if field == "title" else f"Last{char}call"
    assert loc == ("variants", 1, field)
    assert message == f"variant {named!r}: {field} has a control character (U+{ord(char):04X}) at position 4"


@pytest.mark.parametrize("char", [c for c in CONTROLS if c != "\n"])
def test_a_body_keeps_its_line_breaks_and_nothing_else(char: str) -> None:
    fine = Campaign.model_validate(spec({"variant_id": "b", "title": "Hi", "body": "One\nTwo\n\u2028x"}))
    assert fine.variants[1].body == "One\nTwo\n\u2028x"
    loc, message = refusal(spec({"variant_id": "b", "title": "Hi", "body": f"One\nTwo{char}"}))
    assert loc == ("variants", 1, "body")
    assert message == f"variant 'b': body has a control character (U+{ord(char):04X}) at position 7"


@pytest.mark.parametrize(
    ("char", "kind"), [("\u2028", "a line separator"), ("\u2029", "a paragraph separator")]
)
def test_a_title_is_one_line_in_unicode_too(char: str, kind: str) -> None:
    _, message = refusal(spec({"variant_id": "b", "title": f"Hi{char}there"}))
    assert message == f"variant 'b': title has {kind} (U+{ord(char):04X}) at position 2"


def test_text_that_is_merely_unusual_passes() -> None:
    titles = ["Ready for more? 🎉", "Ça va ? — 20 % de réduction", "限时优惠", "Tab-free\u00a0nbsp"]
    variants = [{"variant_id": f"v{k}", "title": title, "body": "¡Hola!"} for k, title in enumerate(titles)]
    assert len(Campaign.model_validate({**spec(), "variants": variants}).variants) == len(titles)


@pytest.mark.parametrize("channel", list(Channel))
def test_titles_and_bodies_up_to_each_channels_limit_pass_and_one_more_is_refused(channel: Channel) -> None:
    limit = CHANNEL_TEXT_LIMITS[channel]
    longest_title = limit.title if limit.combined is None else limit.combined - 2  # room for "\n" + body
    longest_body = limit.body if limit.combined is None else limit.combined - 2
    for title, body in ((longest_title * "t", "b"), ("t", longest_body * "b")):
        Campaign.model_validate(spec({"variant_id": "b", "title": title, "body": body}, channels=(channel,)))

    loc, message = refusal(spec({"variant_id": "b", "title": "t" * (limit.title + 1)}, channels=(channel,)))
    assert loc == ()  # the limit depends on the campaign's channels: the campaign is refused
    assert message == (
        f"variant 'b': title is {limit.title + 1} characters, longer than the {channel.value} "
        f"channel's {limit.title}"
    )
    _, message = refusal(
        spec({"variant_id": "b", "title": "t", "body": "b" * (limit.body + 1)}, channels=(channel,))
    )
    assert message == (
        f"variant 'b': body is {limit.body + 1} characters, longer than the {channel.value} "
        f"channel's {limit.body}"
    )


def test_sms_counts_title_line_break_and_body_as_one_text() -> None:
    fits = {"variant_id": "b", "title": "t" * 99, "body": "b" * 1500}  # 99 + 1 + 1500 = 1600
    Campaign.model_validate(spec(fits, channels=("sms",)))
    _, message = refusal(spec({**fits, "title": "t" * 100}, channels=("sms",)))
    assert message == (
        "variant 'b': title and body are 1601 characters as one text (title, line break, body), "
        "longer than the sms channel's 1600"
    )


def test_every_channel_of_the_campaign_counts_fallbacks_included() -> None:
    long_body = {"variant_id": "b", "title": "Hi", "body": "b" * 5000}
    Campaign.model_validate(spec(long_body, channels=("email",)))
    _, message = refusal(spec(long_body, channels=("email", "push")))
    assert message == "variant 'b': body is 5000 characters, longer than the push channel's 2000"


# Through the service: FastAPI answers a refused body 422, and a frozen campaign 409.
ServedApi = tuple[TestClient, dict[str, str]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """The app over an empty data dir (no feature store, heuristic models): enough for campaigns."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("campaigns"))
    migrate(settings)
    headers = {"X-API-Key": create_key(PlanStore(settings), Role.campaign)}
    with TestClient(create_app(settings)) as client:
        yield client, headers


def test_the_api_refuses_bad_text_with_422_naming_variant_and_field(served: ServedApi) -> None:
    client, headers = served
    body = spec({"variant_id": "b", "title": "Hello there\rBcc: all@example.com"}, channels=("email",))
    response = client.post("/v1/campaigns", json=body, headers=headers)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "variants", 1, "title"]
    assert "variant 'b': title has a control character (U+000D) at position 11" in error["msg"]

    too_long = spec({"variant_id": "b", "title": "x" * 240})
    response = client.post("/v1/campaigns", json=too_long, headers=headers)
    assert response.status_code == 422
    assert "variant 'b': title is 240 characters, longer than the push channel's 200" in response.text


def test_the_api_answers_409_to_a_new_spec_once_dispatch_started(served: ServedApi) -> None:
    client, headers = served
    body = {**spec({"variant_id": "b", "title": "What's new?"}), "campaign_id": "frozen"}
    assert client.post("/v1/campaigns", json=body, headers=headers).status_code == 201
    renamed = {**body, "name": "Black Friday, take two"}
    assert client.post("/v1/campaigns", json=renamed, headers=headers).status_code == 201  # still idle
    assert client.post("/v1/campaigns/frozen/dispatch", headers=headers).status_code == 200

    one_variant = {**renamed, "variants": renamed["variants"][:1]}
    response = client.post("/v1/campaigns", json=one_variant, headers=headers)
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "campaign 'frozen' is running: its spec is frozen once dispatch has started; create a new campaign"
    )
    assert client.post("/v1/campaigns", json=renamed, headers=headers).status_code == 201  # a retry
    kept = client.get("/v1/campaigns/frozen", headers=headers).json()
    assert [v["variant_id"] for v in kept["variants"]] == ["a", "b"]


def test_a_campaign_stored_before_the_text_rules_still_loads_from_the_plan_store() -> None:
    """One old campaign that breaks a newer rule must not stop every due-scan that reads it."""
    old = spec({"variant_id": "b", "title": "Hello\r\nthere " + "x" * 300, "body": "b"})
    with pytest.raises(ValidationError):
        Campaign.model_validate(old)
    assert Campaign.stored(old).variants[-1].title.startswith("Hello\r\n")


def test_push_text_is_measured_in_bytes_as_fcm_counts_it() -> None:
    """1,000 emoji fit push's 2,000 characters but not FCM's 4 KB payload."""
    with pytest.raises(ValidationError, match=r"variant 'b': title and body are 4\d{3} bytes in UTF-8"):
        Campaign.model_validate(spec({"variant_id": "b", "title": "Hi", "body": "🍂" * 1000}))
    Campaign.model_validate(spec({"variant_id": "b", "title": "Hi", "body": "🍂" * 800}))
