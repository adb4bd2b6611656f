"""Webhook bodies read into typed requests: POST /webhooks, PUT /webhooks/{id} and the pricing
webhooks' POST (j1mskyd/api/webhooks.py, api/pricing.py).

The handlers parse a body here and hand the result to WebhookService, which no longer sees
raw JSON.  The first broken rule is reported (400 VALIDATION_ERROR with ``details``), with
the field names and messages the API has always used.  What needs more than the body is the
service's: the target policy (names looked up), whether the sink plugin accepts the webhook.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from .events import EVENT_TYPES, LIVE_ONLY
from .request_fields import KEEP, Keep, bad

__all__ = ["AGENT_DONE", "MAX_HEADERS", "RESERVED_HEADERS", "STATUSES", "Headers", "NewWebhook", "WebhookChange",
           "check_url", "file_path", "parse_change", "parse_new"]

AGENT_DONE = ("agent.completed", "agent.failed", "agent.cancelled")
STATUSES = ("active", "paused")
CHANGEABLE = ("events", "status", "active", "url", "secret", "description", "headers")
Headers = tuple[tuple[str, str], ...]  # custom headers of a webhook: (name, value), in the order given

# Custom headers a webhook may not set: what the HTTP connection and its framing are made of
# (hop-by-hop, length, encoding, host), what proxies authenticate with, and the daemon's own
# (the body's type, the signature, event and delivery id a receiver checks).
RESERVED_HEADERS = frozenset(h.lower() for h in (
    "Host", "Content-Length", "Content-Type", "Content-Encoding", "Transfer-Encoding", "Connection", "Keep-Alive",
    "Proxy-Authorization", "Proxy-Authenticate", "Proxy-Connection", "TE", "Trailer", "Upgrade", "Expect"))
RESERVED_PREFIX = "x-j1msky-"
MAX_HEADERS = 20
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]{0,1024}")        # visible ASCII, space and tab: never CR or LF


@dataclass(frozen=True, kw_only=True)
class NewWebhook:
    """A webhook to register; ``secret`` None: the service generates one (shown once)."""

    url: str
    sink: str
    events: tuple[str, ...] = AGENT_DONE
    secret: str | None = None
    description: str | None = None
    status: Literal["active", "paused"] = "active"   # "status": "paused" or "active": false registers it paused
    headers: Headers = ()


@dataclass(frozen=True, kw_only=True)
class WebhookChange:
    """What a PUT changes; every other field is ``KEEP``."""

    events: tuple[str, ...] | Keep = KEEP
    status: Literal["active", "paused"] | Keep = KEEP
    url: str | Keep = KEEP
    secret: str | Keep = KEEP
    description: str | None | Keep = KEEP
    headers: Headers | Keep = KEEP


def file_path(url: str) -> str:
    """The local path a file sink's ``file:///absolute/path`` URL names (percent-decoded)."""
    return unquote(urlsplit(url).path)


def check_url(url: Any, sink: str) -> str:
    """The URL's shape for its sink (a ``file:///absolute/path`` for the file sink, else an
    http(s) URL); whether its target is allowed is the service's question."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise bad("url", "url is required (a string of at most 2000 characters)")
    if any(c <= " " or c == "\x7f" for c in url):  # stored as sent, and sent as the client would not expect
        raise bad("url", "url must not contain spaces or control characters (percent-encode them)")
    scheme = urlsplit(url).scheme
    if sink == "file":
        if scheme != "file" or not urlsplit(url).path.startswith("/"):
            raise bad("url", "the file sink needs a file:///absolute/path URL")
    elif scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise bad("url", "url must be an http:// or https:// URL")
    return url


def _events(events: Any) -> tuple[str, ...]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise bad("events", "events must be a non-empty list of event names")
    unknown = [e for e in events if e != "*" and e not in EVENT_TYPES]
    if unknown:
        known = [e for e in EVENT_TYPES if e not in LIVE_ONLY]
        raise bad("events", f"Unknown event(s): {', '.join(unknown)} (known: {', '.join(known)}, or '*')")
    live = [e for e in events if e in LIVE_ONLY]
    if live:
        raise bad("events", f"{', '.join(live)} reach live readers only (GET /events/stream, /ws), never a webhook")
    return tuple(dict.fromkeys(events))


def _secret(secret: Any) -> str:
    if not isinstance(secret, str) or not 8 <= len(secret) <= 256:
        raise bad("secret", "secret must be a string of 8 to 256 characters")
    return secret


def _description(description: Any) -> str | None:
    if description is not None and (not isinstance(description, str) or len(description) > 500):
        raise bad("description", "description must be a string of at most 500 characters")
    return description


def _sink(body: dict[str, Any], sink_kinds: Sequence[str]) -> str:
    sink = body.get("sink")
    if sink is None:
        url = body.get("url")
        sink = "file" if isinstance(url, str) and url.startswith("file:") else "http"
    if not isinstance(sink, str) or sink not in sink_kinds:
        raise bad("sink", f"sink must be one of: {', '.join(sink_kinds)}")
    return sink


def _headers(headers: Any) -> Headers:
    """Custom headers sent with each delivery.  Their values are secrets-adjacent (a token for
    the receiver): no message here quotes one."""
    if not isinstance(headers, dict):
        raise bad("headers", "headers must be an object of header names to string values")
    if len(headers) > MAX_HEADERS:
        raise bad("headers", f"headers may hold at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise bad("headers", "header names must be 1-64 characters of an HTTP token (letters, digits, "
                                 "!#$%&'*+.^_`|~-)")
        folded = name.lower()
        if folded in RESERVED_HEADERS or folded.startswith(RESERVED_PREFIX):
            raise bad("headers", f"header {name!r} cannot be set: the daemon or the connection sets it "
                                 f"(refused: {', '.join(sorted(RESERVED_HEADERS))}, X-J1MSKY-*)")
        if folded in seen:
            raise bad("headers", f"header {name!r} is given twice (header names are case-insensitive)")
        seen.add(folded)
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise bad("headers", f"the value of header {name!r} must be a string of at most 1024 visible ASCII "
                                 "characters, spaces or tabs (no line breaks)")
    return tuple(headers.items())


def _status(body: dict[str, Any]) -> Literal["active", "paused"] | None:
    """``status`` (active | paused) or ``active`` (a boolean), which must agree when both are
    sent; None: neither is."""
    status = None
    if "status" in body:
        if body["status"] not in STATUSES:
            raise bad("status", "status must be active or paused")
        status = body["status"]
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise bad("active", "active must be true or false")
        active: Literal["active", "paused"] = "active" if body["active"] else "paused"
        if status not in (None, active):
            raise bad("active", "active and status disagree: send one of them")
        status = active
    return status


def _events_of(body: dict[str, Any]) -> tuple[str, ...]:
    """``events`` (a list), or ``event`` (one name: the API reference's cookbook, Recipe 3),
    never both; neither: the agent end events."""
    if "event" in body:
        if "events" in body:
            raise bad("event", "send events (a list) or event (one name), not both")
        if not isinstance(body["event"], str):
            raise bad("event", "event must be one event name (or send events, a list)")
        return _events([body["event"]])
    return _events(body.get("events", list(AGENT_DONE)))


def parse_new(body: Any, sink_kinds: Sequence[str]) -> NewWebhook:
    """A registration body; ``sink_kinds``: the sink plugins loaded (the registry's)."""
    if not isinstance(body, dict):
        raise bad("body", "Request body must be a JSON object")
    sink = _sink(body, sink_kinds)
    url = check_url(body.get("url"), sink)
    events = _events_of(body)
    secret = body.get("secret")
    return NewWebhook(url=url, sink=sink, events=events, secret=None if secret is None else _secret(secret),
                      description=_description(body.get("description")),
                      status=_status(body) or "active",
                      headers=_headers(body["headers"]) if "headers" in body else ())


def parse_change(body: Any, sink: str) -> WebhookChange:
    """A PUT body for a webhook whose sink is ``sink`` (its URL is checked for that sink)."""
    if not isinstance(body, dict) or not body:
        raise bad("body", "send a JSON object with events, status (or active), url, secret, description or headers")
    unknown = set(body) - set(CHANGEABLE)
    if unknown:
        raise bad(sorted(unknown)[0], f"Cannot change '{sorted(unknown)[0]}'")
    changes: dict[str, Any] = {}
    if "events" in body:
        changes["events"] = _events(body["events"])
    status = _status(body)
    if status is not None:
        changes["status"] = status
    if "headers" in body:
        changes["headers"] = _headers(body["headers"])
    if "url" in body:
        changes["url"] = check_url(body["url"], sink)
    if "secret" in body:
        changes["secret"] = _secret(body["secret"])
    if "description" in body:
        changes["description"] = _description(body["description"])
    return WebhookChange(**changes)
