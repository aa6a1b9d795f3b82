"""The push channel's FCM credentials against real local servers: a service-account file whose token_uri
is a stub OAuth token endpoint (it checks the JWT grant's signature with the account's public key) and
a stub FCM that accepts only the token it is told is current."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dispatch.channels import FCM_SCOPE, adapter_for, close_adapters
from pushplan.settings import Settings
from tests.unit.test_channels import HttpStub, Received, channel_settings, free_port, message

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google's token endpoint checks that the assertion is addressed to it, whatever token_uri says.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
ACCOUNT_EMAIL = "pushplan-sender@sa-project.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def _fresh_adapters() -> Iterator[None]:
    yield
    close_adapters()


@pytest.fixture(scope="module")
def account_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _unpadded_b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class TokenEndpoint:
    """An OAuth 2.0 token endpoint for service accounts (RFC 7523): grants `tok-N` for a valid assertion."""

    public_key: rsa.RSAPublicKey
    expires_in: int = 3600
    issued: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def answer(self, request: Received) -> tuple[int, dict[str, Any]]:
        form = parse_qs(request.body.decode())
        if form.get("grant_type") != [JWT_GRANT]:
            return self._refuse("unsupported_grant_type", f"grant_type {form.get('grant_type')}")
        header, claims, signature = form["assertion"][0].split(".")
        try:
            self.public_key.verify(
                _unpadded_b64(signature),
                f"{header}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return self._refuse("invalid_grant", "Invalid JWT Signature.")
        claimed = json.loads(_unpadded_b64(claims))
        if json.loads(_unpadded_b64(header))["alg"] != "RS256":
            return self._refuse("invalid_grant", "not RS256")
        if (claimed["iss"], claimed["aud"]) != (ACCOUNT_EMAIL, GOOGLE_TOKEN_AUDIENCE):
            return self._refuse("invalid_grant", f"iss {claimed['iss']}, aud {claimed['aud']}")
        if claimed["scope"].split() != [FCM_SCOPE]:
            return self._refuse("invalid_scope", claimed["scope"])
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}

    def _refuse(self, error: str, description: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append(error)
        return 400, {"error": error, "error_description": description}


@dataclass
class Fcm:
    """FCM's messages:send, accepting only the token last granted (or a fixed one), until revoked."""

    endpoint: TokenEndpoint
    fixed_token: str | None = None
    revoked: set[str] = field(default_factory=set)
    refuse_all: bool = False

    def answer(self, request: Received) -> tuple[int, dict[str, Any]]:
        if request.path != "/v1/projects/sa-project/messages:send":
            return 404, {"error": {"code": 404, "status": "NOT_FOUND", "message": request.path}}
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        current = self.fixed_token or (self.endpoint.issued[-1] if self.endpoint.issued else None)
        if self.refuse_all or token != current or token in self.revoked:
            return 401, {
                "error": {
                    "code": 401,
                    "status": "UNAUTHENTICATED",
                    "message": "Request had invalid authentication credentials.",
                }
            }
        return 200, {"name": f"projects/sa-project/messages/{len(request.body)}"}


@dataclass
class Google:
    """Both stubs, their servers, and a service-account file pointing at the token endpoint."""

    endpoint: TokenEndpoint
    fcm: Fcm
    token_stub: HttpStub
    fcm_stub: HttpStub
    credentials_file: Path

    def settings(self, tmp_path: Path, **values: Any) -> Settings:
        values.setdefault("fcm_credentials_file", self.credentials_file)
        return channel_settings(tmp_path, fcm_url=self.fcm_stub.url, **values)

    def tokens_sent(self) -> list[str]:
        return [r.headers["Authorization"].removeprefix("Bearer ") for r in self.fcm_stub.received]


def service_account_file(path: Path, key: rsa.RSAPrivateKey, token_uri: str) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    document = {
        "type": "service_account",
        "project_id": "sa-project",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": ACCOUNT_EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def google(tmp_path: Path, account_key: rsa.RSAPrivateKey) -> Iterator[Google]:
    endpoint = TokenEndpoint(account_key.public_key())
    fcm = Fcm(endpoint)
    token_stub, fcm_stub = HttpStub(answer=endpoint.answer), HttpStub(answer=fcm.answer)
    servers = [token_stub.serve(), fcm_stub.serve()]
    credentials = service_account_file(tmp_path / "sa.json", account_key, f"{token_stub.url}/token")
    yield Google(endpoint, fcm, token_stub, fcm_stub, credentials)
    for server in servers:
        server.shutdown()
        server.server_close()


def test_pushes_carry_a_token_minted_from_the_service_account(tmp_path: Path, google: Google) -> None:
    push = adapter_for(google.settings(tmp_path), "push")  # the project comes from the file

    outcomes = push.send([message(1, "push", "device-1"), message(2, "push", "device-2")])

    assert [(o.ok, o.provider_id is not None) for o in outcomes] == [(True, True)] * 2
    assert google.endpoint.issued == ["tok-1"]  # one grant, reused while it is valid
    assert google.tokens_sent() == ["tok-1", "tok-1"]
    [grant] = google.token_stub.received
    assert grant.path == "/token" and not google.endpoint.refusals


def test_a_revoked_token_is_renewed_once_and_the_message_still_sent(tmp_path: Path, google: Google) -> None:
    push = adapter_for(google.settings(tmp_path), "push")
    [first] = push.send([message(1, "push", "device-1")])
    google.fcm.revoked.add("tok-1")  # Google rotated it before its expiry

    [second] = push.send([message(2, "push", "device-2")])

    assert first.ok and second.ok
    assert google.endpoint.issued == ["tok-1", "tok-2"]  # exactly one grant more
    assert google.tokens_sent() == ["tok-1", "tok-1", "tok-2"]


def test_a_401_that_persists_fails_after_one_renewal(tmp_path: Path, google: Google) -> None:
    google.fcm.refuse_all = True
    push = adapter_for(google.settings(tmp_path), "push")

    [outcome] = push.send([message(1, "push", "device-1")])

    assert (outcome.ok, outcome.transient, outcome.unknown, outcome.reason) == (
        False,
        False,
        False,
        "rejected_401",
    )
    assert outcome.detail and "UNAUTHENTICATED" in outcome.detail
    assert google.endpoint.issued == ["tok-1", "tok-2"]
    assert google.tokens_sent() == ["tok-1", "tok-2"]  # one more call, no loop


def test_a_static_token_is_used_as_it_is_and_its_401_is_final(tmp_path: Path, google: Google) -> None:
    google.fcm.fixed_token = "static-token"
    settings = google.settings(
        tmp_path, fcm_credentials_file=None, fcm_project="sa-project", fcm_token="static-token"
    )
    push = adapter_for(settings, "push")

    [sent] = push.send([message(1, "push", "device-1")])
    google.fcm.revoked.add("static-token")
    [refused] = push.send([message(2, "push", "device-2")])

    assert sent.ok
    assert (refused.ok, refused.transient, refused.reason) == (False, False, "rejected_401")
    assert google.tokens_sent() == ["static-token", "static-token"]  # nothing to renew: no second call
    assert google.token_stub.received == []


def test_a_token_about_to_expire_is_renewed_before_the_send(tmp_path: Path, google: Google) -> None:
    # A minute is inside google-auth's early-renewal margin (a few minutes): each send mints anew.
    google.endpoint.expires_in = 60
    push = adapter_for(google.settings(tmp_path), "push")

    outcomes = push.send([message(1, "push", "device-1"), message(2, "push", "device-2")])

    assert all(o.ok for o in outcomes)
    assert google.endpoint.issued == ["tok-1", "tok-2"]
    assert google.tokens_sent() == ["tok-1", "tok-2"]  # renewed ahead, never refused first


def test_threads_sharing_the_channel_mint_one_token(tmp_path: Path, google: Google) -> None:
    push = adapter_for(google.settings(tmp_path), "push")
    start = threading.Barrier(8)
    outcomes: list[bool] = []

    def send(n: int) -> None:
        start.wait()
        outcomes.extend(o.ok for o in push.send([message(n, "push", f"device-{n}")]))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert outcomes == [True] * 8
    assert google.endpoint.issued == ["tok-1"]


def test_a_key_the_token_endpoint_does_not_know_fails_without_calling_fcm(
    tmp_path: Path, google: Google
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = service_account_file(tmp_path / "other.json", stranger, f"{google.token_stub.url}/token")
    push = adapter_for(google.settings(tmp_path, fcm_credentials_file=forged), "push")

    [outcome] = push.send([message(1, "push", "device-1")])

    assert (outcome.ok, outcome.transient, outcome.reason) == (False, False, "credentials_error")
    assert google.endpoint.refusals == ["invalid_grant"]
    assert google.fcm_stub.received == []


def test_an_unreachable_token_endpoint_is_transient(
    tmp_path: Path, google: Google, account_key: rsa.RSAPrivateKey
) -> None:
    nowhere = service_account_file(
        tmp_path / "nowhere.json", account_key, f"http://127.0.0.1:{free_port()}/token"
    )
    push = adapter_for(google.settings(tmp_path, fcm_credentials_file=nowhere), "push")

    [outcome] = push.send([message(1, "push", "device-1")])

    assert (outcome.ok, outcome.transient, outcome.reason) == (False, True, "credentials_error")
    assert google.fcm_stub.received == []


def test_an_unreadable_credentials_file_is_a_configuration_error(tmp_path: Path) -> None:
    missing = channel_settings(tmp_path, fcm_credentials_file=tmp_path / "absent.json")
    with pytest.raises(ValueError, match=r"PUSHPLAN_FCM_CREDENTIALS_FILE .*absent\.json"):
        adapter_for(missing, "push")
    (tmp_path / "broken.json").write_text('{"type": "service_account"}')
    broken = channel_settings(tmp_path, fcm_credentials_file=tmp_path / "broken.json")
    with pytest.raises(ValueError, match="not a readable service-account file"):
        adapter_for(broken, "push")
