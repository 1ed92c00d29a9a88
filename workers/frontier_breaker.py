"""A circuit breaker for the frontier: while the endpoint is down, documents wait instead
of each spending a minute of retries on it.

Closed, every call goes out. After ``failures`` calls in a row that found the frontier
unavailable (no connection, a timeout, 408/409/429 or 5xx), it opens: documents are
parked as ``awaiting_frontier`` without a call. Once ``cooldown_s`` has passed it lets
one call through (half-open: ``workers.frontier`` makes it a canary call, not the
document's own); its answer closes the breaker, another failure opens it again for
twice as long (at most ``MAX_COOLDOWN_S``). One breaker per worker process,
shared by its task threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The error a document parked by an outage carries (also where the breaker is open):
# the recovery pass (workers.frontier_recovery) re-sends exactly these.
UNAVAILABLE = "frontier unavailable"
# How ``acquire`` lets a call through.
CALL, PROBE = "call", "probe"
# Short enough that the frontier, once back, is found within a minute of it.
MAX_COOLDOWN_S = 60.0


class CircuitBreaker:
    """See the module's docstring."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.base_cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._cooldown_s = cooldown_s
        self._open_until: float | None = None
        self._probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._clock() >= self._open_until else "open"

    def allow(self) -> bool:
        """Whether a call may go out now: always when closed; when open, only the one
        probe after the cool-down."""
        return self.acquire() is not None

    def acquire(self) -> str | None:
        """Like ``allow``, saying how: ``CALL`` (closed), ``PROBE`` (the one call let
        through after the cool-down, to be handed back with ``released`` if it ends
        without an answer either way), or None (no call now)."""
        with self._lock:
            if self._open_until is None:
                return CALL
            if self._probing or self._clock() < self._open_until:
                return None
            self._probing = True
            return PROBE

    def succeeded(self) -> None:
        """The frontier answered (any answer, a refusal included): close."""
        with self._lock:
            self._failures = 0
            self._open_until = None
            self._probing = False
            self._cooldown_s = self.base_cooldown_s

    def failed(self, error: str | None) -> None:
        """A call found the frontier unavailable: open after ``failures`` in a row, or at
        once when it was the half-open probe."""
        with self._lock:
            self.last_error = error
            self._failures += 1
            if self._probing:
                self._probing = False
                self._cooldown_s = min(MAX_COOLDOWN_S, 2 * self._cooldown_s)
                self._open_until = self._clock() + self._cooldown_s
            elif self._open_until is None and self._failures >= self.threshold:
                self._open_until = self._clock() + self._cooldown_s

    def released(self) -> None:
        """A call allowed through ended without an answer either way (the task died)."""
        with self._lock:
            self._probing = False

    def reason(self) -> str:
        """What a document parked while the breaker is open carries as its error."""
        return (
            f"{UNAVAILABLE} (circuit open after {self.threshold} failed calls in a row): "
            f"{self.last_error or 'no answer'}"
        )[:500]
