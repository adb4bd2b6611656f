"""Exponential backoff with full jitter (the AWS Architecture Blog recipe), shared by
the agent runtime and the SDK so both pace retries the same way."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 for the first retry).

    A server's Retry-After is a floor: waiting less would only earn another 429.
    """
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
