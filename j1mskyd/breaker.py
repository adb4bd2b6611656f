"""Circuit breaker per provider: closed -> open after N consecutive failures ->
half-open after the recovery time, where exactly one probe call may pass; its
success closes the breaker, its failure opens it again for another period."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "StateChanges"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class StateChanges:
    """Stored state changes of a group of breakers (one app's providers): a reader caching
    what it shows of them (GET /health, model recommendations) compares one integer
    instead of asking every breaker.  The timed open -> half-open step is computed, not
    stored, so it does not count here."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class CircuitBreaker:
    def __init__(self, threshold: int = 5, reset_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, changes: StateChanges | None = None) -> None:
        # ``changes``: shared by the breakers of one app; never by two apps.
        self.changes = changes if changes is not None else StateChanges()
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self.total_failures = 0
        self.total_successes = 0
        self.times_opened = 0

    def retune(self, threshold: int, reset_seconds: float) -> None:
        """New ``[runtime] breaker_*`` settings (a config reload); the state and counts stay."""
        self.threshold, self.reset_seconds = threshold, reset_seconds

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_seconds:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go out now?  In half-open, only the first caller gets through."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probe_out:
            self._set(HALF_OPEN)
            self._probe_out = True
            return True
        return False

    def available(self) -> bool:
        """Like allow() but without claiming the half-open probe (for routing decisions)."""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self._probe_out)

    def record_success(self) -> None:
        self.total_successes += 1
        self._failures = 0
        self._set(CLOSED)
        self._probe_out = False

    def record_failure(self) -> None:
        self.total_failures += 1
        self._failures += 1
        if self._state == HALF_OPEN or self._failures >= self.threshold:
            self._set(OPEN)
            self._opened_at = self._clock()
            self._probe_out = False
            self.times_opened += 1

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.changes.count += 1

    def release_probe(self) -> None:
        """A half-open probe ended without a verdict (cancelled): let another one try."""
        if self._state == HALF_OPEN:
            self._probe_out = False

    def snapshot(self) -> dict[str, object]:
        state = self.state
        retry_in = max(0.0, self.reset_seconds - (self._clock() - self._opened_at)) if state == OPEN else 0.0
        return {"state": state, "consecutive_failures": self._failures, "failures": self.total_failures,
                "successes": self.total_successes, "times_opened": self.times_opened,
                "retry_in_seconds": round(retry_in, 1)}
