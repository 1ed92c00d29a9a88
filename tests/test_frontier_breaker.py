"""The frontier's circuit breaker, on a clock the test moves."""

from __future__ import annotations

from workers.frontier_breaker import CALL, MAX_COOLDOWN_S, PROBE, UNAVAILABLE, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_in_a_row_and_probes_once_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed("HTTP 503")
    breaker.succeeded()  # an answer in between: the count starts again
    for _ in range(3):
        assert breaker.allow()
        breaker.failed("HTTP 503")
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.reason().startswith(UNAVAILABLE) and "HTTP 503" in breaker.reason()
    clock.now = 10
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.failed("timeout")  # still down: open again, for twice as long
    clock.now = 29
    assert not breaker.allow()
    clock.now = 30
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_the_cooldown_doubles_up_to_a_limit_and_a_lost_probe_is_released() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=10, clock=clock)
    breaker.failed("down")
    for _ in range(5):
        clock.now += MAX_COOLDOWN_S
        assert breaker.allow()
        breaker.failed("down")
    clock.now += MAX_COOLDOWN_S - 1
    assert not breaker.allow()  # never longer than the limit
    clock.now += 1
    assert breaker.allow()
    breaker.released()  # the probe's task died without an answer either way
    assert breaker.allow()


def test_only_the_probe_is_handed_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=10, clock=clock)
    assert breaker.acquire() == CALL  # closed: an ordinary call, nothing to hand back
    breaker.failed("down")
    assert breaker.acquire() is None
    clock.now = 10
    assert breaker.acquire() == PROBE
    assert breaker.acquire() is None  # one probe at a time
    breaker.released()  # the probe's task failed before its call: the next may probe
    assert breaker.acquire() == PROBE
