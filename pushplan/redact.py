"""Scrubbing of provider error text: what a channel's provider said, minus addresses and secrets.

Providers echo what they were sent: an SMTP refusal names the mailbox, an SMS gateway the number, FCM
the device token, a failed connection the URL with its API key. Such text is stored in a plan item's
`detail` and shown through the API, so it passes through `scrub` first; each find becomes a
placeholder (`<email>`, `<phone>`, `<token>`, `<secret>`, `<userinfo>`, `<query>`, `<fragment>`) that
still tells a reader what kind of thing was there. Scrubbing twice changes nothing more.

The rules lean towards removing too much: a detail is read to see why a send failed, and the
address or device token it named is in the users file when it is needed.
"""

from __future__ import annotations

import re
from typing import overload

# Each pattern stays linear on any input (bounded parts, matches only from the start of a run): a
# detail can quote a whole response body.

# URLs first: their userinfo would otherwise look like an e-mail address, and a query string holds
# keys too short to look like tokens ("?key=abc123").
_URL = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,31}://[^\s'\"<>`]+", re.IGNORECASE)
_USERINFO = re.compile(r"^([^:/]+://)[^/?#@]+@")
_QUERY = re.compile(r"\?[^#]+")  # a non-empty query only, so that "?<query>" stays as it is
_FRAGMENT = re.compile(r"#.+")

# "Basic" alone is a common word; only in an Authorization header is what follows a credential.
_AUTH_HEADER = re.compile(r"\b(Bearer|Authorization:\s*Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_SECRET_KEYS = (
    r"password|passwd|secret|client[_-]?secret|api[_-]?key|key|access[_-]?token|refresh[_-]?token"
    r"|auth[_-]?token|token"
)
_SECRET_ASSIGNED = re.compile(rf"\b({_SECRET_KEYS})=[^\s&\"',;<>]+", re.IGNORECASE)
_SECRET_IN_JSON = re.compile(rf"(\"(?:{_SECRET_KEYS})\"\s*:\s*)\"[^\"]*\"", re.IGNORECASE)

_EMAIL_ADDRESS = (
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}"
    r"\.[A-Za-z]{2,63}"
)
_EMAIL = re.compile(rf"<{_EMAIL_ADDRESS}>|{_EMAIL_ADDRESS}")

# Long runs of a base64, hex or url-safe alphabet; an FCM registration token is "<instance>:<token>".
_TOKEN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9+/_=-])(?:[A-Za-z0-9_-]{8,}:)?[A-Za-z0-9+/_=-]{32,}")
_HEX = re.compile(r"[0-9a-fA-F:-]+")

# Phone numbers: international (+ or 00, then 8 to 15 digits in groups), national with a trunk 0
# (07700 900123, 030 1234 5678, 06 12 34 56 78) and North American ((415) 555-0100, 415-555-0100).
# Each shape needs a + or a leading 0 or its grouping, so plain numbers (404, a count, a Unix time)
# and dates are left alone.
_NOT_INSIDE = r"(?<![\w.+/-])"  # not part of an id, a decimal or a path
_INTERNATIONAL = re.compile(_NOT_INSIDE + r"(?:\+|00)[1-9]\d{0,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}")
_NATIONAL = re.compile(_NOT_INSIDE + r"0[1-9]\d{0,4}(?:[ -]?\d{2,8}){1,4}(?![\w-])")
_NORTH_AMERICAN = re.compile(_NOT_INSIDE + r"(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w-])")


@overload
def scrub(text: str) -> str: ...
@overload
def scrub(text: None) -> None: ...
def scrub(text: str | None) -> str | None:
    """`text` with e-mail addresses, phone numbers, tokens, credentials and URL queries replaced."""
    if not text:
        return text
    text = _URL.sub(_scrub_url, text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} <token>", text)
    text = _SECRET_ASSIGNED.sub(lambda m: f"{m.group(1)}=<secret>", text)
    text = _SECRET_IN_JSON.sub(lambda m: f'{m.group(1)}"<secret>"', text)
    text = _EMAIL.sub("<email>", text)
    text = _TOKEN_CANDIDATE.sub(_scrub_token, text)
    text = _INTERNATIONAL.sub(lambda m: _phone(m, 8, 15), text)
    text = _NATIONAL.sub(lambda m: _phone(m, 9, 13), text)
    return _NORTH_AMERICAN.sub("<phone>", text)


def _scrub_url(match: re.Match[str]) -> str:
    url = _USERINFO.sub(r"\1<userinfo>@", match.group(0))
    url = _FRAGMENT.sub("#<fragment>", url)
    return _QUERY.sub("?<query>", url)


def _scrub_token(match: re.Match[str]) -> str:
    """A long run is a token when it looks random: all hex, or upper case, lower case and digits
    mixed. Paths and words run long too ("projects/demo-project/messages") but are never both."""
    run = match.group(0)
    looks_random = (
        _HEX.fullmatch(run) is not None and any(c.isdigit() for c in run) and not _is_uuid(run)
    ) or (any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run))
    return "<token>" if looks_random else run


def _is_uuid(run: str) -> bool:
    # An id (a plan item's, a provider's request id) names a record, not a person: worth keeping.
    return re.fullmatch(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", run) is not None


def _phone(match: re.Match[str], fewest_digits: int, most_digits: int) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return "<phone>" if fewest_digits <= digits <= most_digits else match.group(0)
