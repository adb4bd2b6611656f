"""X-RateLimit-* headers: how the HTTP layer shows a rate-limit Decision (ratelimit.py
decides; this module formats).  One RateHeaders per app (app[RATE_HEADERS]), beside its
RequestLimiter, so the cache of full buckets' headers is never shared between apps.

The front door's routes (/v1) also carry the names OpenAI's clients read
(``x-ratelimit-limit-requests``, ``-remaining-requests``, ``-reset-requests``), from the same
decision."""

from __future__ import annotations

import math
from collections.abc import Mapping

from multidict import istr

from ..ratelimit import Decision, RequestLimiter, iso_second
from .common import app_key

__all__ = ["RATE_HEADERS", "RateHeaders", "decision_headers", "go_duration"]

RATE_HEADERS = app_key("j1msky.rate_headers")

# Header names as multidict's istr: a response's headers take them without case-folding
# each one again (every API response carries all four).
_LIMIT, _REMAINING, _RESET, _RESET_AT = (istr(f"X-RateLimit-{name}") for name in ("Limit", "Remaining", "Reset",
                                                                                   "Reset-At"))
_OPENAI_LIMIT, _OPENAI_REMAINING, _OPENAI_RESET = (istr(f"x-ratelimit-{name}-requests")
                                                   for name in ("limit", "remaining", "reset"))
_FULL_MAX = 4096


def decision_headers(decision: Decision) -> dict[str, str]:
    """The four X-RateLimit-* headers of a decision (Reset: unix seconds, rounded up)."""
    reset = math.ceil(decision.reset)
    return {_LIMIT: str(decision.limit), _REMAINING: str(decision.remaining), _RESET: str(reset),
            _RESET_AT: iso_second(reset)}


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-requests (Go's format, to the
    millisecond, rounded up): ``20ms``, ``1s``, ``17.28s``, ``6m0s``, ``1h0m5s``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))  # -1e-6: 0.02 s is 20 ms, not 21 (binary floats)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


class RateHeaders:
    """The headers of responses the limiter counted, and of those it only looks at."""

    def __init__(self, limiter: RequestLimiter) -> None:
        self.limiter = limiter
        # (class, key id, ip) -> ((second, buckets.spends), headers) of full buckets; see peek().
        self._full: dict[tuple[str, str, str | None, int | None], tuple[tuple[int, int], dict[str, str]]] = {}

    def peek(self, endpoint_class: str, key_id: str, ip: str | None,
             own: Mapping[str, int] | None = None) -> dict[str, str]:
        """The headers of limiter.peek(), for responses that are not counted (public routes).

        Buckets that are full (a health probe's usual case) give the same headers for a
        whole second: Remaining = Limit, Reset = the end of the second.  Refilling cannot
        change that, only spending can, so those are kept until the second or
        ``buckets.spends`` changes.  The dict is shared: callers must not modify it.
        ``own``: the key's own limits by class (ratelimit.RequestLimiter).
        """
        buckets = self.limiter.buckets
        stamp = (int(buckets.clock()), buckets.spends)
        who = (endpoint_class, key_id, ip, own.get(endpoint_class) if own else None)
        hit = self._full.get(who)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        decision = self.limiter.peek(endpoint_class, key_id, ip, own)
        headers = decision_headers(decision)
        if decision.remaining == decision.limit:
            if len(self._full) >= _FULL_MAX:  # many passing addresses: start over rather than grow
                self._full.clear()
            self._full[who] = (stamp, headers)
        return headers

    def front_door(self, endpoint_class: str, key_id: str, ip: str | None,
                   decision: Decision | None, own: Mapping[str, int] | None = None) -> dict[str, str]:
        """X-RateLimit-* and OpenAI's names, of ``decision`` (None: the standing, uncounted)."""
        if decision is None:
            decision = self.limiter.peek(endpoint_class, key_id, ip, own)
        headers = decision_headers(decision)
        headers[_OPENAI_LIMIT] = str(decision.limit)
        headers[_OPENAI_REMAINING] = str(decision.remaining)
        headers[_OPENAI_RESET] = go_duration(decision.reset - self.limiter.buckets.clock())
        return headers
