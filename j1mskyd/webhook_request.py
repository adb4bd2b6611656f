"""Webhook bodies read into typed requests: POST /webhooks, PUT /webhooks/{id} and the pricing
webhooks' POST (j1mskyd/api/webhooks.py, api/pricing.py).

The handlers parse a body here and hand the result to WebhookService, which no longer sees
raw JSON.  The first broken rule is reported (400 VALIDATION_ERROR with ``details``), with
the field names and messages the API has always used.  What needs more than the body is the
service's: the target policy (names looked up), whether the sink plugin accepts the webhook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from .events import EVENT_TYPES, LIVE_ONLY
from .request_fields import KEEP, Keep, bad

__all__ = ["AGENT_DONE", "STATUSES", "NewWebhook", "WebhookChange", "check_url", "parse_change", "parse_new"]

AGENT_DONE = ("agent.completed", "agent.failed", "agent.cancelled")
STATUSES = ("active", "paused")
CHANGEABLE = ("events", "status", "url", "secret", "description")


@dataclass(frozen=True, kw_only=True)
class NewWebhook:
    """A webhook to register; ``secret`` None: the service generates one (shown once)."""

    url: str
    sink: str
    events: tuple[str, ...] = AGENT_DONE
    secret: str | None = None
    description: str | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookChange:
    """What a PUT changes; every other field is ``KEEP``."""

    events: tuple[str, ...] | Keep = KEEP
    status: Literal["active", "paused"] | Keep = KEEP
    url: str | Keep = KEEP
    secret: str | Keep = KEEP
    description: str | None | Keep = KEEP


def check_url(url: Any, sink: str) -> str:
    """The URL's shape for its sink (a ``file:///absolute/path`` for the file sink, else an
    http(s) URL); whether its target is allowed is the service's question."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise bad("url", "url is required (a string of at most 2000 characters)")
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


def parse_new(body: Any, sink_kinds: Sequence[str]) -> NewWebhook:
    """A registration body; ``sink_kinds``: the sink plugins loaded (the registry's)."""
    if not isinstance(body, dict):
        raise bad("body", "Request body must be a JSON object")
    sink = _sink(body, sink_kinds)
    url = check_url(body.get("url"), sink)
    events = _events(body.get("events", list(AGENT_DONE)))
    secret = body.get("secret")
    return NewWebhook(url=url, sink=sink, events=events, secret=None if secret is None else _secret(secret),
                      description=_description(body.get("description")))


def parse_change(body: Any, sink: str) -> WebhookChange:
    """A PUT body for a webhook whose sink is ``sink`` (its URL is checked for that sink)."""
    if not isinstance(body, dict) or not body:
        raise bad("body", "send a JSON object with events, status, url, secret or description")
    unknown = set(body) - set(CHANGEABLE)
    if unknown:
        raise bad(sorted(unknown)[0], f"Cannot change '{sorted(unknown)[0]}'")
    changes: dict[str, Any] = {}
    if "events" in body:
        changes["events"] = _events(body["events"])
    if "status" in body:
        if body["status"] not in STATUSES:
            raise bad("status", "status must be active or paused")
        changes["status"] = body["status"]
    if "url" in body:
        changes["url"] = check_url(body["url"], sink)
    if "secret" in body:
        changes["secret"] = _secret(body["secret"])
    if "description" in body:
        changes["description"] = _description(body["description"])
    return WebhookChange(**changes)
