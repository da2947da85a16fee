"""Supervisor semantics, driven by trio's MockClock (``autojump_clock``) so every timing is exact.

With the autojump clock, virtual time only moves when every task is blocked, so "the restart
happened at t0 + 3" is an exact statement about the supervisor, not a race.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import ParamSpec

import pytest
import trio
import trio.testing

from photobot.supervisor import (
    ChildContext,
    ChildSpec,
    Restart,
    Supervisor,
    SupervisorEvent,
    SupervisorGaveUp,
)

P = ParamSpec("P")


def virtual_deadline(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Fail the test, rather than hang it, if it needs more than 10000 s of virtual time.

    Under the autojump clock a supervisor that restarts forever (or deadlocks) races through
    virtual time, so a broken one fails within milliseconds. No test here needs anywhere near this
    much. (A module-level ``pytest.mark.trio(run=...)`` would be neater, but trio_mode's own
    marker takes precedence over it.)
    """

    @functools.wraps(test)
    async def bounded(*args: P.args, **kwargs: P.kwargs) -> None:
        with trio.fail_after(10_000.0):
            await test(*args, **kwargs)

    return bounded


def _events(sup: Supervisor, child: str, kind: str) -> list[SupervisorEvent]:
    return [e for e in sup.events if e.child == child and e.kind == kind]


def _kinds(sup: Supervisor, child: str) -> list[str]:
    return [e.kind for e in sup.events if e.child == child]


class _TaskStatusRecorder:
    def __init__(self) -> None:
        self.called = False

    def started(self, value: object = None) -> None:
        self.called = True


async def _idle(ctx: ChildContext) -> None:
    ctx.started()
    await ctx.stopping.wait()


@virtual_deadline
async def test_crashing_child_backs_off_exponentially_and_sibling_is_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    flaky_runs: list[tuple[float, int]] = []
    steady_runs = 0
    steady_ticks = 0

    async def flaky(ctx: ChildContext) -> None:
        flaky_runs.append((trio.current_time() - t0, ctx.restart_count))
        ctx.started()
        raise RuntimeError("boom")

    async def steady(ctx: ChildContext) -> None:
        nonlocal steady_runs, steady_ticks
        steady_runs += 1
        ctx.started()
        while True:
            await trio.sleep(0.25)
            steady_ticks += 1

    sup = Supervisor(
        [ChildSpec("steady", steady, shutdown_grace=0), ChildSpec("flaky", flaky)],
        intensity=10,
        backoff_base=1.0,
        backoff_max=60.0,
        jitter=0.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(t0 + 7.6)
        ticks_at_7_6 = steady_ticks
        statuses = {s.name: s for s in sup.status()}
        await sup.stop()

    assert flaky_runs == [(0.0, 0), (1.0, 1), (3.0, 2), (7.0, 3)]
    assert [(e.at - t0, e.delay, e.error) for e in _events(sup, "flaky", "crashed")] == [
        (0.0, 1.0, "RuntimeError: boom"),
        (1.0, 2.0, "RuntimeError: boom"),
        (3.0, 4.0, "RuntimeError: boom"),
        (7.0, 8.0, "RuntimeError: boom"),
    ]
    assert [(e.at - t0, e.delay) for e in _events(sup, "flaky", "restarting")] == [
        (1.0, 1.0),
        (3.0, 2.0),
        (7.0, 4.0),
    ]
    # The sibling ran once, uninterrupted, ticking every 0.25 s for the whole 7.6 s.
    assert steady_runs == 1
    assert ticks_at_7_6 == 30
    assert _kinds(sup, "steady") == ["started", "stopped"]
    assert statuses["steady"].state == "running"
    assert statuses["steady"].restarts == 0
    assert statuses["flaky"].state == "restarting"
    assert statuses["flaky"].restarts == 3
    assert statuses["flaky"].next_restart_in == pytest.approx(15.0 - 7.6)


@virtual_deadline
async def test_jitter_is_applied_within_bounds_and_reproducible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def flaky(ctx: ChildContext) -> None:
        ctx.started()
        raise ValueError("flap")

    seed = 20240601
    sup = Supervisor(
        [ChildSpec("flaky", flaky)],
        intensity=30,
        period=10_000.0,
        backoff_base=1.0,
        backoff_max=4.0,
        jitter=0.25,
        rng=random.Random(seed),
    )
    with pytest.raises(SupervisorGaveUp):
        await sup.run()

    crashes = [e for e in _events(sup, "flaky", "crashed") if e.delay is not None]
    delays = [e.delay for e in crashes]
    bases = [min(4.0, 2.0 ** (k - 1)) for k in range(1, 31)]
    expected_rng = random.Random(seed)
    expected = [base * expected_rng.uniform(0.75, 1.25) for base in bases]
    assert delays == pytest.approx(expected, rel=1e-12)

    factors = [d / base for d, base in zip(delays, bases, strict=True)]
    assert all(0.75 <= f <= 1.25 for f in factors)
    # Actually spread out, not just the base formula.
    assert min(factors) < 0.85
    assert max(factors) > 1.15
    # And the supervisor slept exactly the jittered delay.
    restarts = _events(sup, "flaky", "restarting")
    assert [r.at for r in restarts] == pytest.approx([c.at + c.delay for c in crashes])


@virtual_deadline
async def test_zero_jitter_uses_the_exact_formula_and_leaves_rng_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def flaky(ctx: ChildContext) -> None:
        ctx.started()
        raise ValueError("flap")

    rng = random.Random(7)
    state_before = rng.getstate()
    sup = Supervisor(
        [ChildSpec("flaky", flaky)],
        intensity=6,
        period=1_000.0,
        backoff_base=0.5,
        backoff_max=3.0,
        jitter=0.0,
        rng=rng,
    )
    with pytest.raises(SupervisorGaveUp):
        await sup.run()
    delays = [e.delay for e in _events(sup, "flaky", "crashed") if e.delay is not None]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert rng.getstate() == state_before


@virtual_deadline
async def test_intensity_exceeded_stops_the_others_in_reverse_order_and_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    log: list[tuple[str, str, float]] = []
    attempts = 0

    async def polite(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.stopping.wait()
        log.append((ctx.name, "stopping", trio.current_time() - t0))

    async def stubborn(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.stopping.wait()
        log.append((ctx.name, "stopping", trio.current_time() - t0))
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            log.append((ctx.name, "cancelled", trio.current_time() - t0))
            raise

    async def dispatcher(ctx: ChildContext) -> None:
        nonlocal attempts
        attempts += 1
        ctx.started()
        raise RuntimeError(f"boom {attempts}")

    sup = Supervisor(
        [
            ChildSpec("first", polite),
            ChildSpec("dispatcher", dispatcher),
            ChildSpec("stubborn", stubborn, shutdown_grace=2.0),
            ChildSpec("last", polite),
        ],
        intensity=2,
        period=60.0,
        backoff_base=1.0,
        jitter=0.0,
    )
    with pytest.raises(SupervisorGaveUp) as info:
        await sup.run()

    # Crashes at 0 and 1 were restarted (after 1 s and 2 s); the third, at 3, was one too many.
    exc = info.value
    assert exc.child == "dispatcher"
    assert exc.last_error == "RuntimeError: boom 3"
    assert str(exc) == (
        "actor 'dispatcher' crashed 3 times within 60s (intensity 2); "
        "last error: RuntimeError: boom 3"
    )
    assert isinstance(exc.__cause__, RuntimeError)
    assert exc.__cause__.args == ("boom 3",)
    assert attempts == 3
    assert [(e.at - t0, e.error) for e in _events(sup, "dispatcher", "gave_up")] == [
        (3.0, "RuntimeError: boom 3")
    ]
    # Reverse start order, one at a time: "first" is asked only once "stubborn" is gone, which
    # took its full 2 s grace.
    assert log == [
        ("last", "stopping", 3.0),
        ("stubborn", "stopping", 3.0),
        ("stubborn", "cancelled", 5.0),
        ("first", "stopping", 5.0),
    ]
    assert trio.current_time() - t0 == 5.0
    assert {s.name: (s.state, s.restarts) for s in sup.status()} == {
        "first": ("stopped", 0),
        "dispatcher": ("gave_up", 2),
        "stubborn": ("stopped", 0),
        "last": ("stopped", 0),
    }


@virtual_deadline
async def test_permanent_child_that_keeps_returning_also_exhausts_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def ticker(ctx: ChildContext) -> None:
        ctx.started()

    sup = Supervisor(
        [ChildSpec("ticker", ticker)], intensity=2, period=60.0, backoff_base=1.0, jitter=0.0
    )
    with pytest.raises(SupervisorGaveUp) as info:
        await sup.run()
    assert str(info.value) == (
        "actor 'ticker' returned 3 times within 60s (intensity 2); last error: returned normally"
    )
    assert info.value.__cause__ is None
    assert [e.delay for e in _events(sup, "ticker", "exited")] == [1.0, 2.0, None]


@virtual_deadline
async def test_giving_up_during_start_up_never_starts_later_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    later_ran = False

    async def never_ready(ctx: ChildContext) -> None:
        raise OSError("camera missing")

    async def later(ctx: ChildContext) -> None:
        nonlocal later_ran
        later_ran = True
        await _idle(ctx)

    sup = Supervisor(
        [ChildSpec("camera", never_ready), ChildSpec("later", later)],
        intensity=1,
        backoff_base=1.0,
        jitter=0.0,
    )
    task_status = _TaskStatusRecorder()
    with pytest.raises(SupervisorGaveUp, match="actor 'camera' crashed 2 times"):
        await sup.run(task_status=task_status)  # type: ignore[arg-type]
    assert not later_ran
    assert not task_status.called
    assert [s.state for s in sup.status()] == ["gave_up", "stopped"]


@virtual_deadline
async def test_restarts_that_left_the_window_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    # How long each run lives before it crashes; the run after the last one stays up.
    lifetimes = [0.0, 0.0, 0.0, 100.0, 0.0]

    async def child(ctx: ChildContext) -> None:
        ctx.started()
        if ctx.restart_count >= len(lifetimes):
            await ctx.stopping.wait()
            return
        await trio.sleep(lifetimes[ctx.restart_count])
        raise RuntimeError(f"crash {ctx.restart_count}")

    sup = Supervisor(
        [ChildSpec("worker", child)], intensity=3, period=60.0, backoff_base=1.0, jitter=0.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep_until(t0 + 200.0)
        status = sup.status()[0]
        await sup.stop()

    # Three quick crashes fill the window (intensity 3); after 100 s of stable running they have
    # left it, so the next crash is restarted with k=1 backoff instead of giving up.
    crashed = _events(sup, "worker", "crashed")
    assert [(e.at - t0, e.delay) for e in crashed] == [
        (0.0, 1.0),
        (1.0, 2.0),
        (3.0, 4.0),
        (107.0, 1.0),
        (108.0, 2.0),
    ]
    assert (status.state, status.restarts) == ("running", 5)


@pytest.mark.parametrize(("lifetime", "gives_up"), [(61.0, False), (59.0, True)])
@virtual_deadline
async def test_rarely_crashing_child_is_restarted_forever(
    autojump_clock: trio.testing.MockClock, lifetime: float, gives_up: bool
) -> None:
    t0 = trio.current_time()
    runs = 0

    async def rare(ctx: ChildContext) -> None:
        nonlocal runs
        runs += 1
        ctx.started()
        await trio.sleep(lifetime)
        raise RuntimeError("rare")

    sup = Supervisor(
        [ChildSpec("rare", rare)], intensity=1, period=60.0, backoff_base=1.0, jitter=0.0
    )
    if gives_up:
        # Crash at 59, restart at 60, crash at 119: the restart stamped 59 is still within
        # [119 - 60, 119], so a second restart would exceed intensity 1.
        with pytest.raises(SupervisorGaveUp, match="crashed 2 times within 60s"):
            await sup.run()
        assert trio.current_time() - t0 == 119.0
        assert runs == 2
        return

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(20 * 62.0 + 30.0)
        await sup.stop()
    # Each cycle is 61 s up plus 1 s backoff; every crash finds the previous restart 62 s old.
    assert runs == 21
    assert [e.delay for e in _events(sup, "rare", "crashed")] == [1.0] * 20
    assert sup.status()[0].restarts == 20


@pytest.mark.parametrize(
    ("restart", "ending", "runs_expected", "state_expected", "restarts_expected"),
    [
        (Restart.TRANSIENT, "return", 1, "exited", 0),
        (Restart.TRANSIENT, "crash", 2, "running", 1),
        (Restart.TEMPORARY, "return", 1, "exited", 0),
        (Restart.TEMPORARY, "crash", 1, "failed", 0),
        (Restart.PERMANENT, "return", 2, "running", 1),
        (Restart.PERMANENT, "crash", 2, "running", 1),
    ],
)
@virtual_deadline
async def test_restart_policies(
    autojump_clock: trio.testing.MockClock,
    restart: Restart,
    ending: str,
    runs_expected: int,
    state_expected: str,
    restarts_expected: int,
) -> None:
    t0 = trio.current_time()
    runs = 0

    async def child(ctx: ChildContext) -> None:
        nonlocal runs
        runs += 1
        ctx.started()
        if ctx.restart_count > 0:
            await ctx.stopping.wait()
            return
        await trio.sleep(1.0)
        if ending == "crash":
            raise ValueError("first run")

    sup = Supervisor([ChildSpec("c", child, restart=restart)], backoff_base=1.0, jitter=0.0)
    returned_at: float | None = None

    async def run_it() -> None:
        nonlocal returned_at
        await sup.run()
        returned_at = trio.current_time() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_it)
        await trio.sleep(10.0)
        status = sup.status()[0]
        await sup.stop()

    assert runs == runs_expected
    assert status.state == state_expected
    assert status.restarts == restarts_expected
    assert status.restart_type == restart.value
    assert status.last_error == ("ValueError: first run" if ending == "crash" else None)
    ended_for_good = state_expected in ("exited", "failed")
    # With its only child ended for good, run() returns by itself, right when the child ends.
    assert returned_at == (1.0 if ended_for_good else 10.0)
    if ended_for_good:
        assert _kinds(sup, "c") == ["started", "crashed" if ending == "crash" else "exited"]
    else:
        ended = _events(sup, "c", "crashed" if ending == "crash" else "exited")
        assert [(e.at - t0, e.delay) for e in ended] == [(1.0, 1.0)]
        assert [e.at - t0 for e in _events(sup, "c", "restarting")] == [2.0]


@virtual_deadline
async def test_children_start_in_order_and_stop_in_reverse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    log: list[tuple[str, float]] = []

    def note(what: str) -> None:
        log.append((what, trio.current_time() - t0))

    async def wind_down(ctx: ChildContext) -> None:
        await ctx.stopping.wait()
        note(f"{ctx.name} stopping")
        await trio.sleep(1.0)  # within the grace: a graceful exit, not a cancellation

    async def a(ctx: ChildContext) -> None:
        note("a begin")
        await trio.sleep(1.0)
        ctx.started()
        await wind_down(ctx)

    async def b(ctx: ChildContext) -> None:
        note(f"b begin {ctx.restart_count}")
        await trio.sleep(0.5)
        if ctx.restart_count == 0:
            # Before started(): a crash like any other, and start-up keeps waiting for b.
            raise OSError("camera not ready")
        ctx.started()
        await wind_down(ctx)

    async def c(ctx: ChildContext) -> None:
        note("c begin")
        ctx.started()
        ctx.started()  # idempotent
        await wind_down(ctx)

    sup = Supervisor(
        [ChildSpec("a", a), ChildSpec("b", b), ChildSpec("c", c)],
        backoff_base=2.0,
        jitter=0.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        note("run ready")
        await trio.sleep_until(t0 + 14.0)
        await sup.stop()
        note("stop returned")

    assert log == [
        ("a begin", 0.0),
        ("b begin 0", 1.0),
        ("b begin 1", 3.5),  # crashed at 1.5, 2 s backoff
        ("c begin", 4.0),
        ("run ready", 4.0),
        ("c stopping", 14.0),
        ("b stopping", 15.0),
        ("a stopping", 16.0),
        ("stop returned", 17.0),
    ]
    assert [(e.child, e.at - t0) for e in sup.events if e.kind == "started"] == [
        ("a", 1.0),
        ("b", 4.0),
        ("c", 4.0),
    ]
    assert [(e.child, e.at - t0) for e in sup.events if e.kind == "stopped"] == [
        ("c", 15.0),
        ("b", 16.0),
        ("a", 17.0),
    ]


@virtual_deadline
async def test_graceful_stop_waits_for_return_and_cancels_after_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    seen: dict[str, float] = {}
    polite_cancelled = False

    async def polite(ctx: ChildContext) -> None:
        nonlocal polite_cancelled
        ctx.started()
        try:
            await ctx.stopping.wait()
            seen["polite stopping"] = trio.current_time() - t0
            await trio.sleep(2.0)  # flushing; shorter than the 3 s grace
        except trio.Cancelled:
            polite_cancelled = True
            raise
        seen["polite returned"] = trio.current_time() - t0

    async def stubborn(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.stopping.wait()
        seen["stubborn stopping"] = trio.current_time() - t0
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            seen["stubborn cancelled"] = trio.current_time() - t0
            raise

    sup = Supervisor(
        [
            ChildSpec("polite", polite, shutdown_grace=3.0),
            ChildSpec("stubborn", stubborn, shutdown_grace=3.0),
        ]
    )
    during_grace: list[tuple[str, str]] = []

    async def sample_status() -> None:
        await trio.sleep_until(t0 + 6.0)
        during_grace.extend((s.name, s.state) for s in sup.status())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(sample_status)
        await trio.sleep_until(t0 + 5.0)
        await sup.stop()
        stop_returned = trio.current_time() - t0

    assert seen == {
        "stubborn stopping": 5.0,
        "stubborn cancelled": 8.0,  # exactly its grace after `stopping` was set
        "polite stopping": 8.0,
        "polite returned": 10.0,
    }
    assert not polite_cancelled
    assert stop_returned == 10.0
    assert during_grace == [("polite", "running"), ("stubborn", "stopping")]
    assert [s.state for s in sup.status()] == ["stopped", "stopped"]


@virtual_deadline
async def test_status_reflects_states_errors_and_next_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    gate = trio.Event()

    async def flaky(ctx: ChildContext) -> None:
        ctx.started()
        await trio.sleep(1.0)
        if ctx.restart_count == 0:
            raise ValueError("boom")
        if ctx.restart_count == 1:
            raise ValueError("line one\nline two " + "x" * 400)
        await ctx.stopping.wait()

    async def slowpoke(ctx: ChildContext) -> None:
        await gate.wait()
        await _idle(ctx)

    sup = Supervisor(
        [
            ChildSpec("steady", _idle),
            ChildSpec("flaky", flaky, restart=Restart.TRANSIENT),
            ChildSpec("slowpoke", slowpoke, restart=Restart.TEMPORARY),
        ],
        backoff_base=2.0,
        jitter=0.0,
    )

    def snapshot() -> dict[str, tuple[object, ...]]:
        return {
            s.name: (s.state, s.restarts, s.last_error, s.last_error_at, s.next_restart_in)
            for s in sup.status()
        }

    assert [(s.name, s.state, s.restart_type) for s in sup.status()] == [
        ("steady", "stopped", "permanent"),
        ("flaky", "stopped", "transient"),
        ("slowpoke", "stopped", "temporary"),
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep_until(t0 + 2.0)
        # flaky crashed at 1 and restarts at 1 + 2; slowpoke never said started().
        assert snapshot() == {
            "steady": ("running", 0, None, None, None),
            "flaky": ("restarting", 0, "ValueError: boom", t0 + 1.0, 1.0),
            "slowpoke": ("starting", 0, None, None, None),
        }
        await trio.sleep_until(t0 + 3.5)
        assert snapshot()["flaky"] == ("running", 1, "ValueError: boom", t0 + 1.0, None)
        await trio.sleep_until(t0 + 4.5)
        state, restarts, last_error, last_error_at, next_restart_in = snapshot()["flaky"]
        assert (state, restarts, last_error_at) == ("restarting", 1, t0 + 4.0)
        assert next_restart_in == 3.5  # second restart: 4 s backoff from 4.0
        assert isinstance(last_error, str)
        assert last_error.startswith("ValueError: line one line two xxx")
        assert "\n" not in last_error
        assert len(last_error) == 300
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert snapshot()["slowpoke"][0] == "running"
        await sup.stop()
    assert [s.state for s in sup.status()] == ["stopped", "stopped", "stopped"]


@virtual_deadline
async def test_started_on_a_stale_context_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    contexts: list[ChildContext] = []

    async def child(ctx: ChildContext) -> None:
        contexts.append(ctx)
        if ctx.restart_count == 0:
            raise RuntimeError("crashed before ready")
        await ctx.stopping.wait()  # never reports ready

    sup = Supervisor([ChildSpec("c", child)], backoff_base=1.0, jitter=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(2.0)
        assert len(contexts) == 2
        contexts[0].started()  # e.g. from a task the first run leaked
        assert sup.status()[0].state == "starting"
        assert "started" not in _kinds(sup, "c")
        contexts[1].started()
        assert sup.status()[0].state == "running"
        await sup.stop()


@virtual_deadline
async def test_stop_during_backoff_cancels_the_wait_and_never_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    runs = 0

    async def flaky(ctx: ChildContext) -> None:
        nonlocal runs
        runs += 1
        ctx.started()
        raise RuntimeError("boom")

    sup = Supervisor([ChildSpec("flaky", flaky)], backoff_base=10.0, jitter=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1.0)
        assert sup.status()[0].state == "restarting"
        await sup.stop()
        stop_returned = trio.current_time() - t0
        await trio.sleep(100.0)

    assert stop_returned == 1.0  # did not sit out the 10 s backoff
    assert runs == 1
    assert _kinds(sup, "flaky") == ["started", "crashed", "stopped"]
    assert sup.status()[0].state == "stopped"
    assert sup.status()[0].next_restart_in is None


@virtual_deadline
async def test_stop_is_idempotent_and_concurrent_callers_all_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()

    async def slow_to_stop(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.stopping.wait()
        await trio.sleep(2.0)

    sup = Supervisor([ChildSpec("slow", slow_to_stop)])
    returned: list[float] = []

    async def stopper() -> None:
        await sup.stop()
        returned.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(stopper)
        nursery.start_soon(stopper)
    await sup.stop()
    assert returned == [2.0, 2.0]
    assert _kinds(sup, "slow") == ["started", "stopped"]


@virtual_deadline
async def test_stop_before_run_means_run_starts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran = False

    async def child(ctx: ChildContext) -> None:
        nonlocal ran
        ran = True
        await _idle(ctx)

    sup = Supervisor([ChildSpec("c", child)])
    await sup.stop()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
    assert not ran
    assert sup.status()[0].state == "stopped"
    with pytest.raises(RuntimeError, match="only be called once"):
        await sup.run()


@virtual_deadline
async def test_run_returns_when_every_child_ended_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def job(ctx: ChildContext) -> None:
        ctx.started()
        await trio.sleep(3.0)

    async def broken(ctx: ChildContext) -> None:
        raise KeyError("config")

    t0 = trio.current_time()
    sup = Supervisor(
        [
            ChildSpec("job", job, restart=Restart.TRANSIENT),
            ChildSpec("broken", broken, restart=Restart.TEMPORARY),
        ]
    )
    await sup.run()
    assert trio.current_time() - t0 == 3.0
    assert [(s.state, s.last_error) for s in sup.status()] == [
        ("exited", None),
        ("failed", "KeyError: 'config'"),
    ]


@virtual_deadline
async def test_crash_inside_a_childs_own_nursery_is_a_plain_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fan_out(ctx: ChildContext) -> None:
        ctx.started()
        if ctx.restart_count:
            await ctx.stopping.wait()
            return

        async def part() -> None:
            raise RuntimeError("inner")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(part)

    sup = Supervisor([ChildSpec("fan", fan_out)], backoff_base=1.0, jitter=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5.0)
        await sup.stop()
    assert [e.error for e in _events(sup, "fan", "crashed")] == ["RuntimeError: inner"]
    assert sup.status()[0].restarts == 1


@virtual_deadline
async def test_base_exceptions_propagate_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Fatal(BaseException):
        pass

    sibling_cancelled = False

    async def sibling(ctx: ChildContext) -> None:
        nonlocal sibling_cancelled
        ctx.started()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            sibling_cancelled = True
            raise

    async def doomed(ctx: ChildContext) -> None:
        ctx.started()
        await trio.sleep(1.0)
        raise Fatal("interpreter going down")

    sup = Supervisor([ChildSpec("sibling", sibling), ChildSpec("doomed", doomed)])
    with pytest.raises(Fatal):
        await sup.run()
    assert sibling_cancelled
    assert "crashed" not in _kinds(sup, "doomed")


@virtual_deadline
async def test_outer_cancellation_propagates_and_marks_children_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = Supervisor([ChildSpec("a", _idle), ChildSpec("b", _idle)])
    with trio.move_on_after(5.0) as scope:
        await sup.run()
    assert scope.cancelled_caught
    assert [s.state for s in sup.status()] == ["stopped", "stopped"]
    await sup.stop()  # already finished: returns at once


@virtual_deadline
async def test_events_go_to_on_event_and_to_the_log(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[SupervisorEvent] = []

    def on_event(event: SupervisorEvent) -> None:
        received.append(event)
        if event.kind == "started":
            raise RuntimeError("broken sink")  # must not take the supervisor down

    async def dispatcher(ctx: ChildContext) -> None:
        ctx.started()
        if ctx.restart_count == 0:
            raise RuntimeError("boom")
        await ctx.stopping.wait()

    caplog.set_level(logging.INFO, logger="photobot.supervisor")
    sup = Supervisor(
        [ChildSpec("dispatcher", dispatcher)], backoff_base=0.5, jitter=0.0, on_event=on_event
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1.0)
        await sup.stop()

    assert received == list(sup.events)
    assert [e.kind for e in received] == ["started", "crashed", "restarting", "started", "stopped"]
    crash_records = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert [r.getMessage() for r in crash_records] == [
        "actor dispatcher crashed: RuntimeError: boom; restarting in 0.50 s"
    ]
    record = crash_records[0]
    assert record.actor == "dispatcher"  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None
    assert any("on_event callback failed" in r.getMessage() for r in caplog.records)


def test_invalid_configuration_is_rejected() -> None:
    async def noop(ctx: ChildContext) -> None:
        pass

    with pytest.raises(ValueError, match="duplicate child names: a"):
        Supervisor([ChildSpec("a", noop), ChildSpec("a", noop)])
    with pytest.raises(ValueError, match="jitter"):
        Supervisor([], jitter=1.5)
    with pytest.raises(ValueError, match="shutdown_grace"):
        ChildSpec("a", noop, shutdown_grace=-1.0)
