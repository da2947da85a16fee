"""One-for-one supervision of long-running actors, in the style of an OTP supervisor.

A :class:`Supervisor` owns a fixed list of children, each described by a :class:`ChildSpec`.
:meth:`Supervisor.run` owns one nursery; every child runs inside it, in a task of its own that the
supervisor also uses to restart it. The nursery is private, and a child's exceptions never
reach it: they are caught, recorded and answered with a restart (or not).

Start-up is in order: a child's ``run`` is called only after the previous child has called
:meth:`ChildContext.started`. A child that crashes before that is restarted like any other crash,
and the start-up keeps waiting for it; one that ends for good (a transient or temporary child)
counts as ready, so the children after it still start. Once every child is ready, ``run``
reports ``task_status.started()``.

What happens when a child's ``run`` ends depends on how it ended and on its :class:`Restart`:

* an ``Exception`` is a crash. Permanent and transient children are restarted; a temporary one
  stays down in state ``"failed"``.
* a normal return restarts a permanent child; transient and temporary ones stay down in state
  ``"exited"``.
* ``trio.Cancelled`` and other ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) are not
  failures of the child and are never caught: they propagate out of ``run``.

Restarts back off exponentially: the k-th restart within the current intensity window waits
``min(backoff_max, backoff_base * 2**(k-1))`` times a jitter factor drawn from
``rng.uniform(1 - jitter, 1 + jitter)``, so a flapping dependency is not hammered and actors that
failed together do not retry in lockstep. The wait is on Trio's clock.

Restart intensity follows OTP's MaxR/MaxT, counted *per child* rather than per supervisor: the
actors are independent, so one noisy actor should neither use up the others' budget nor be
excused by their good behaviour, and the failure can name the one actor at fault. Each restart is
timestamped when it is decided (at the crash, not after the backoff). If a child would be
restarted more than ``intensity`` times within ``period`` seconds, it is not restarted: its state
becomes ``"gave_up"``, every other child is stopped as by :meth:`Supervisor.stop`, and ``run``
raises :class:`SupervisorGaveUp`. A child that then runs stably for longer than ``period`` leaves
its old restarts behind, so its backoff starts again from k=1.

Stopping (:meth:`Supervisor.stop`, or after giving up) goes in reverse start order, one child at
a time: its ``ctx.stopping`` event is set, it gets ``shutdown_grace`` seconds to return, then its
``run`` is cancelled, and the next child is stopped only once it is gone. A child waiting out a
backoff is not running, so its pending restart is simply dropped. From the moment a stop is
requested nothing is restarted any more. A child that shields itself from cancellation delays the
stop for as long as it does so.

``run`` returns once the stop has completed, or once every child has ended for good.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import trio

from photobot.errors import PhotobotError

__all__ = [
    "ChildContext",
    "ChildSpec",
    "ChildState",
    "ChildStatus",
    "EventKind",
    "Restart",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorGaveUp",
]

logger = logging.getLogger("photobot.supervisor")

ChildState = Literal[
    "starting", "running", "restarting", "stopping", "stopped", "failed", "exited", "gave_up"
]
EventKind = Literal["started", "crashed", "restarting", "exited", "stopped", "gave_up"]

# States from which a child will never run again on its own.
_ENDED: frozenset[ChildState] = frozenset({"exited", "failed"})
_ERROR_MAX_CHARS = 300
# Bounded so that a child flapping for days cannot grow the history without limit.
_EVENT_HISTORY = 1000


class Restart(enum.Enum):
    """When a child is restarted after its ``run`` ends."""

    PERMANENT = "permanent"
    """Always restarted, also after a normal return."""
    TRANSIENT = "transient"
    """Restarted only after a crash; a normal return ends it."""
    TEMPORARY = "temporary"
    """Never restarted; a crash is recorded and the child stays down."""


class ChildContext:
    """What one run of a child gets from its supervisor; a restart gets a fresh one.

    ``stopping`` is set when the supervisor asks the child to stop gracefully; after the child's
    ``shutdown_grace`` it is cancelled. ``restart_count`` is how many times the child had been
    restarted before this run began (0 on the first run).
    """

    __slots__ = ("_on_started", "_started", "name", "restart_count", "stopping")

    def __init__(
        self, name: str, restart_count: int, on_started: Callable[[ChildContext], None]
    ) -> None:
        self.name = name
        self.restart_count = restart_count
        self.stopping = trio.Event()
        self._on_started = on_started
        self._started = False

    def started(self) -> None:
        """Signal that the child is ready; the next child in start order may start.

        Idempotent, and may be called from any task the child owns.
        """
        if not self._started:
            self._started = True
            self._on_started(self)

    @property
    def is_started(self) -> bool:
        return self._started

    def __repr__(self) -> str:
        return f"<ChildContext {self.name!r} restart_count={self.restart_count}>"


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child. ``name`` must be unique within a supervisor."""

    name: str
    run: Callable[[ChildContext], Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    shutdown_grace: float = 5.0
    """Seconds between ``ctx.stopping`` being set and the child being cancelled."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ChildSpec.name must not be empty")
        if not isinstance(self.restart, Restart):
            raise TypeError(f"ChildSpec.restart must be a Restart, not {self.restart!r}")
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0, not {self.shutdown_grace!r}")


@dataclass(frozen=True)
class ChildStatus:
    """A snapshot of one child, as shown by /health.

    Before ``run`` every child is ``"stopped"``; during start-up, children still waiting for
    their turn are already ``"starting"``.
    """

    name: str
    state: ChildState
    restart_type: str
    restarts: int
    """Runs begun after the first one."""
    last_error: str | None
    """``"ValueError: boom"``: one line, at most 300 characters."""
    last_error_at: float | None
    """Trio clock."""
    next_restart_in: float | None
    """Seconds until the next run begins, while ``state == "restarting"``."""


@dataclass(frozen=True)
class SupervisorEvent:
    """Something that happened to a child, for logs and tests.

    * ``started``: the child called ``ctx.started()``.
    * ``crashed``: ``run`` raised ``error``. ``delay`` is set if a restart is scheduled.
    * ``exited``: ``run`` returned. ``delay`` is set if a restart is scheduled (permanent).
    * ``restarting``: the backoff of ``delay`` seconds is over and ``run`` is called again.
    * ``stopped``: the child ended because it was asked to stop; ``error`` if it raised meanwhile.
    * ``gave_up``: restart intensity exceeded; ``error`` is the last error.
    """

    kind: EventKind
    child: str
    at: float
    """Trio clock."""
    error: str | None = None
    delay: float | None = None


class SupervisorGaveUp(PhotobotError):
    """An actor ended more often than its supervisor's restart intensity allows.

    ``child`` names the actor and ``last_error`` describes its last ending
    (``"RuntimeError: boom"``, or ``"returned normally"`` for a permanent child that kept
    returning); ``__cause__`` is the last exception, if there was one.
    """

    code = "supervisor_gave_up"

    def __init__(self, message: str, *, child: str, last_error: str) -> None:
        super().__init__(message)
        self.child = child
        self.last_error = last_error


@dataclass(eq=False)
class _Child:
    """The supervisor's mutable record of one child. Only the supervisor's tasks touch it."""

    spec: ChildSpec
    state: ChildState = "stopped"
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    last_error: str | None = None
    last_error_at: float | None = None
    next_restart_at: float | None = None
    # Exactly one of these is set while the child's task is alive and past its first step:
    # ``ctx``/``run_scope`` while ``run`` is executing, ``backoff_scope`` while waiting to restart.
    ctx: ChildContext | None = None
    run_scope: trio.CancelScope | None = None
    backoff_scope: trio.CancelScope | None = None
    launched: bool = False
    ready: bool = False
    stop_requested: bool = False
    hard_cancelled: bool = False
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True)
class _GiveUp:
    child: str
    description: str
    exc: BaseException | None
    message: str


class Supervisor:
    """Runs ``children`` under one-for-one supervision; see the module docstring."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        intensity: int = 5,
        period: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
        on_event: Callable[[SupervisorEvent], None] | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate child names: {', '.join(duplicates)}")
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, not {intensity!r}")
        if period <= 0:
            raise ValueError(f"period must be > 0, not {period!r}")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must be >= 0")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], not {jitter!r}")
        self._children = [_Child(spec) for spec in children]
        self._intensity = intensity
        self._period = period
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._on_event = on_event
        self._events: deque[SupervisorEvent] = deque(maxlen=_EVENT_HISTORY)
        self._run_called = False
        self._stop_requested = False
        self._gave_up: _GiveUp | None = None
        # The run() task sleeps on this event; whatever changes what it is waiting for sets it.
        self._wake = trio.Event()
        self._finished = trio.Event()

    # -- public ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, then report ``task_status.started()``.

        Returns when :meth:`stop` has completed or every child has ended for good. Raises
        :class:`SupervisorGaveUp` when a child exceeds the restart intensity, after stopping every
        other child in reverse start order (if that happens during start-up, ``started()`` is
        never reported). May be called only once.
        """
        if self._run_called:
            raise RuntimeError("Supervisor.run() may only be called once")
        self._run_called = True
        try:
            async with trio.open_nursery() as nursery:
                await self._start_all(nursery)
                if self._gave_up is None:
                    # Also after a stop during start-up: the caller's nursery.start() should
                    # return, not fail with "exited without calling started()".
                    task_status.started()
                await self._wait_until(
                    lambda: self._halted() or all(c.state in _ENDED for c in self._children)
                )
                for child in reversed(self._children):
                    await self._stop_child(child)
        except BaseExceptionGroup as group:
            # Child crashes never get here; what does is a BaseException such as
            # KeyboardInterrupt raised inside a child. Unwrap it so `except KeyboardInterrupt`
            # works for our caller. Groups carrying Cancelled are left for trio's scopes to split.
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], trio.Cancelled):
                raise group.exceptions[0] from None
            raise
        finally:
            self._finished.set()
        if self._gave_up is not None:
            raise SupervisorGaveUp(
                self._gave_up.message,
                child=self._gave_up.child,
                last_error=self._gave_up.description,
            ) from self._gave_up.exc

    async def stop(self) -> None:
        """Stop every child gracefully, in reverse start order, and wait until all are gone.

        Idempotent and safe to call from any task while :meth:`run` runs; returns at once if
        ``run`` has not been called (it will then start nothing) or has already finished. A child
        calling this on its own supervisor waits for itself, so it is cancelled after its grace.
        """
        if not self._stop_requested:
            self._stop_requested = True
            self._poke()
        if self._run_called:
            await self._finished.wait()

    def status(self) -> list[ChildStatus]:
        """A snapshot of every child, in start order."""
        statuses = []
        for child in self._children:
            next_restart_in = None
            if child.state == "restarting" and child.next_restart_at is not None:
                next_restart_in = max(0.0, child.next_restart_at - trio.current_time())
            statuses.append(
                ChildStatus(
                    name=child.spec.name,
                    state=child.state,
                    restart_type=child.spec.restart.value,
                    restarts=child.restarts,
                    last_error=child.last_error,
                    last_error_at=child.last_error_at,
                    next_restart_in=next_restart_in,
                )
            )
        return statuses

    @property
    def events(self) -> tuple[SupervisorEvent, ...]:
        """The most recent events (up to 1000), oldest first."""
        return tuple(self._events)

    # -- start-up and shutdown (the run() task) ----------------------------------------------

    def _halted(self) -> bool:
        return self._stop_requested or self._gave_up is not None

    def _poke(self) -> None:
        self._wake.set()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        # No checkpoint between testing the predicate and installing a fresh event, so a poke
        # cannot slip in between and be lost.
        while not predicate():
            self._wake = trio.Event()
            await self._wake.wait()

    async def _start_all(self, nursery: trio.Nursery) -> None:
        for child in self._children:
            child.state = "starting"
        for child in self._children:
            if self._halted():
                break
            child.launched = True
            nursery.start_soon(self._supervise, child, name=f"actor:{child.spec.name}")
            await self._wait_until(lambda child=child: child.ready or self._halted())
        for child in self._children:
            if not child.launched:
                child.state = "stopped"

    async def _stop_child(self, child: _Child) -> None:
        if not child.launched or child.done.is_set():
            return
        child.stop_requested = True
        if child.backoff_scope is not None:
            # Nothing is running, so there is nothing to wait for: drop the pending restart.
            child.backoff_scope.cancel()
        elif child.ctx is not None and child.run_scope is not None:
            child.state = "stopping"
            child.ctx.stopping.set()
            with trio.move_on_after(child.spec.shutdown_grace):
                await child.done.wait()
            if not child.done.is_set():
                child.hard_cancelled = True
                child.run_scope.cancel()
        await child.done.wait()

    # -- one child (its own task) ------------------------------------------------------------

    async def _supervise(self, child: _Child) -> None:
        try:
            while not (child.stop_requested or self._halted()):
                error = await self._run_once(child)
                delay = self._after_run(child, error)
                if delay is None:
                    return
                child.next_restart_at = trio.current_time() + delay
                with trio.CancelScope() as child.backoff_scope:
                    await trio.sleep_until(child.next_restart_at)
                child.backoff_scope = None
                child.next_restart_at = None
                if child.stop_requested or self._halted():
                    break
                child.restarts += 1
                self._emit("restarting", child, delay=delay)
            child.state = "stopped"
            self._emit("stopped", child)
        finally:
            if child.state in ("starting", "running", "restarting", "stopping"):
                # Cancelled from outside (or a BaseException): the child is gone all the same.
                child.state = "stopped"
                self._emit("stopped", child)
            child.ctx = child.run_scope = child.backoff_scope = None
            # Whatever the outcome, start-up must not wait for this child any longer.
            child.ready = True
            child.done.set()
            self._poke()

    async def _run_once(self, child: _Child) -> Exception | None:
        """Run the child once; return what it raised, or None if it returned (or was cancelled)."""
        ctx = ChildContext(child.spec.name, child.restarts, partial(self._on_started, child))
        child.ctx = ctx
        child.state = "starting"
        try:
            # The except is outside the scope so that the scope first strips its own Cancelled
            # out of any group the child raises while being cancelled.
            with trio.CancelScope() as child.run_scope:
                await child.spec.run(ctx)
        except Exception as exc:
            return exc
        finally:
            child.ctx = child.run_scope = None
        return None

    def _on_started(self, child: _Child, ctx: ChildContext) -> None:
        # A context from an earlier run (a task the child leaked) or one that is already being
        # stopped has nothing left to announce.
        if child.ctx is not ctx or child.state != "starting":
            return
        child.state = "running"
        child.ready = True
        self._emit("started", child)
        self._poke()

    def _after_run(self, child: _Child, exc: Exception | None) -> float | None:
        """Record how a run ended; return the backoff before the next run, or None for none."""
        now = trio.current_time()
        description = None
        if exc is not None:
            description = _describe(exc)
            child.last_error = description
            child.last_error_at = now
        if child.stop_requested or self._halted():
            child.state = "stopped"
            note = "cancelled after grace" if child.hard_cancelled else None
            self._emit("stopped", child, error=description, exc=exc, note=note)
            return None
        kind: EventKind = "crashed" if exc is not None else "exited"
        restart = child.spec.restart
        if (exc is None and restart is not Restart.PERMANENT) or (
            exc is not None and restart is Restart.TEMPORARY
        ):
            child.state = "failed" if exc is not None else "exited"
            self._emit(kind, child, error=description, exc=exc)
            return None

        window = child.restart_times
        while window and window[0] < now - self._period:
            window.popleft()
        if len(window) >= self._intensity:
            verb = "crashed" if exc is not None else "returned"
            last = description if description is not None else "returned normally"
            message = (
                f"actor {child.spec.name!r} {verb} {len(window) + 1} times within "
                f"{self._period:g}s (intensity {self._intensity}); last error: {last}"
            )
            child.state = "gave_up"
            self._emit(kind, child, error=description, exc=exc)
            if self._gave_up is None:
                self._gave_up = _GiveUp(child.spec.name, last, exc, message)
            self._emit("gave_up", child, error=last, note=message)
            return None
        window.append(now)
        # Beyond 2**1000 the cap has long applied; the clamp only keeps the float finite.
        exponent = min(len(window) - 1, 1000)
        delay = min(self._backoff_max, self._backoff_base * 2.0**exponent)
        if self._jitter:
            delay *= self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        child.state = "restarting"
        self._emit(kind, child, error=description, delay=delay, exc=exc)
        return delay

    # -- events ------------------------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        child: _Child,
        *,
        error: str | None = None,
        delay: float | None = None,
        exc: BaseException | None = None,
        note: str | None = None,
    ) -> None:
        event = SupervisorEvent(kind, child.spec.name, trio.current_time(), error, delay)
        self._events.append(event)
        _log(event, child, exc, note)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                # A broken event sink must not take the supervisor, and every actor, with it.
                logger.exception("on_event callback failed for %r", event)


def _log(
    event: SupervisorEvent, child: _Child, exc: BaseException | None, note: str | None
) -> None:
    name = event.child
    extra = {"actor": name, "event": event.kind, "error": event.error, "delay": event.delay}
    if event.kind == "started":
        suffix = f" (restart {child.restarts})" if child.restarts else ""
        logger.info("actor %s started%s", name, suffix, extra=extra)
    elif event.kind == "restarting":
        logger.info("actor %s restarting (restart %d)", name, child.restarts, extra=extra)
    elif event.kind == "crashed":
        if event.delay is not None:
            logger.warning(
                "actor %s crashed: %s; restarting in %.2f s",
                name,
                event.error,
                event.delay,
                exc_info=exc,
                extra=extra,
            )
        else:
            logger.error("actor %s crashed: %s", name, event.error, exc_info=exc, extra=extra)
    elif event.kind == "exited":
        if event.delay is not None:
            logger.warning(
                "actor %s returned; restarting in %.2f s (permanent)",
                name,
                event.delay,
                extra=extra,
            )
        else:
            logger.info("actor %s exited", name, extra=extra)
    elif event.kind == "stopped":
        if event.error is not None:
            logger.warning(
                "actor %s stopped: crashed while stopping: %s",
                name,
                event.error,
                exc_info=exc,
                extra=extra,
            )
        elif note is not None:
            logger.warning(
                "actor %s stopped: %s (%.2f s)", name, note, child.spec.shutdown_grace, extra=extra
            )
        else:
            logger.info("actor %s stopped", name, extra=extra)
    else:
        logger.error("%s", note or f"actor {name} gave up", extra=extra)


def _describe(exc: BaseException) -> str:
    """``"ValueError: boom"``: one line, at most 300 characters, for logs and /health."""
    if isinstance(exc, BaseExceptionGroup):
        # A child that crashed inside its own nursery: the leaves are what a person wants to see.
        text = "; ".join(_describe(leaf) for leaf in exc.exceptions)
    else:
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable>"
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = " ".join(text.split())
    if len(text) > _ERROR_MAX_CHARS:
        text = text[: _ERROR_MAX_CHARS - 3] + "..."
    return text
