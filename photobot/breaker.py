"""A circuit breaker per provider, on Trio's clock (so a mock clock can test it).

Closed: calls pass; ``threshold`` transient failures in a row open it. Open: calls are refused
until ``cool_down`` seconds have passed, then it is half-open. Half-open: one trial call passes;
its success closes the breaker, its failure opens it again for another ``cool_down``. Fatal
errors (bad input) say nothing about the provider's health and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class CircuitBreaker:
    name: str
    threshold: int = 5
    cool_down: float = 30.0
    _failures: int = 0
    _opened_at: float | None = None
    _trial_in_flight: bool = False
    state_changes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if trio.current_time() - self._opened_at >= self.cool_down:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go to this provider now? In half-open state, only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        if self._opened_at is not None:
            self.state_changes.append("closed")
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or (self._opened_at is None and self._failures >= self.threshold):
            self._opened_at = trio.current_time()
            self.state_changes.append("open")

    def release(self) -> None:
        """A trial call ended without a verdict (canceled, fatal input error)."""
        self._trial_in_flight = False
