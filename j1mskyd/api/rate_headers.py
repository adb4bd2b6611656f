"""X-RateLimit-* headers: how the HTTP layer shows a rate-limit Decision (ratelimit.py
decides; this module formats).  One RateHeaders per app (app[RATE_HEADERS]), beside its
RequestLimiter, so the cache of full buckets' headers is never shared between apps."""

from __future__ import annotations

import math

from multidict import istr

from ..ratelimit import Decision, RequestLimiter, iso_second
from .common import app_key

__all__ = ["RATE_HEADERS", "RateHeaders", "decision_headers"]

RATE_HEADERS = app_key("j1msky.rate_headers")

# Header names as multidict's istr: a response's headers take them without case-folding
# each one again (every API response carries all four).
_LIMIT, _REMAINING, _RESET, _RESET_AT = (istr(f"X-RateLimit-{name}") for name in ("Limit", "Remaining", "Reset",
                                                                                   "Reset-At"))
_FULL_MAX = 4096


def decision_headers(decision: Decision) -> dict[str, str]:
    """The four X-RateLimit-* headers of a decision (Reset: unix seconds, rounded up)."""
    reset = math.ceil(decision.reset)
    return {_LIMIT: str(decision.limit), _REMAINING: str(decision.remaining), _RESET: str(reset),
            _RESET_AT: iso_second(reset)}


class RateHeaders:
    """The headers of responses the limiter counted, and of those it only looks at."""

    def __init__(self, limiter: RequestLimiter) -> None:
        self.limiter = limiter
        # (class, key id, ip) -> ((second, buckets.spends), headers) of full buckets; see peek().
        self._full: dict[tuple[str, str, str | None], tuple[tuple[int, int], dict[str, str]]] = {}

    def peek(self, endpoint_class: str, key_id: str, ip: str | None) -> dict[str, str]:
        """The headers of limiter.peek(), for responses that are not counted (public routes).

        Buckets that are full (a health probe's usual case) give the same headers for a
        whole second: Remaining = Limit, Reset = the end of the second.  Refilling cannot
        change that, only spending can, so those are kept until the second or
        ``buckets.spends`` changes.  The dict is shared: callers must not modify it.
        """
        buckets = self.limiter.buckets
        stamp = (int(buckets.clock()), buckets.spends)
        who = (endpoint_class, key_id, ip)
        hit = self._full.get(who)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        decision = self.limiter.peek(endpoint_class, key_id, ip)
        headers = decision_headers(decision)
        if decision.remaining == decision.limit:
            if len(self._full) >= _FULL_MAX:  # many passing addresses: start over rather than grow
                self._full.clear()
            self._full[who] = (stamp, headers)
        return headers
