"""The circuit breaker on Trio's clock (mock clock: no real waiting)."""

from __future__ import annotations

import trio

from photobot.breaker import CircuitBreaker


async def test_opens_after_threshold_half_opens_after_cool_down(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    b = CircuitBreaker("comfyui", threshold=3, cool_down=30)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    assert b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    await trio.sleep(29.9)
    assert not b.allow()
    await trio.sleep(0.1)
    assert b.state == "half_open"
    assert b.allow()  # the one trial
    assert not b.allow()  # nobody else while it runs
    b.record_failure()  # the trial failed: open for another cool-down
    assert b.state == "open"
    await trio.sleep(30)
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()
    assert b.state_changes == ["open", "open", "closed"]


async def test_success_resets_the_count(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    b = CircuitBreaker("kie", threshold=2, cool_down=5)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


async def test_released_trial_lets_another_try(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    b = CircuitBreaker("kie", threshold=1, cool_down=5)
    b.record_failure()
    await trio.sleep(5)
    assert b.allow()
    b.release()  # e.g. the trial job was canceled: no verdict
    assert b.allow()
