"""When a delivery is tried again: backoff with full jitter, Retry-After, and waits that cost nothing.

    policy = RetryPolicy.from_settings(settings)
    policy.delay_s(attempt, retry_after_s, rng)        pause after failed attempt number `attempt`
    policy.next_delay_s(attempts, age_s, ...)          that pause, or None: give up (dead-letter)
    raise Deferred("...", defer_s=2.0)                 "not now": try later, no attempt spent

Backoff is exponential with full jitter (a uniform draw in [0, min(max_delay_s, base_s * 2^(n-1))]),
so many deliveries failing together do not come back together. A Retry-After from the upstream
(429, 503) is a floor: never retried sooner, but capped at `MAX_RETRY_AFTER_S` so one bad header
cannot park a lead for days. A delivery gives up after `max_attempts` failed attempts or once the
next try would fall outside `window_s` since it arrived (`link_wait_s` for a patch waiting for its
create).

`Deferred` is the one failure that is not an attempt: the shared circuit breaker is open, or an
earlier delivery for the same record must go first. Such a job is put back without touching its
attempt count or its retry window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bridge.connect.classify import MAX_RETRY_AFTER_S
from bridge.settings import Settings

MAX_EXPONENT = 62  # 2**62 * any sane base is far above any max_delay_s: no float overflow


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and by a window since arrival."""

    base_s: float
    max_delay_s: float
    window_s: float
    max_attempts: int
    link_wait_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base_s=settings.retry_base_s,
            max_delay_s=settings.retry_max_delay_s,
            window_s=settings.retry_window_s,
            max_attempts=settings.retry_max_attempts,
            link_wait_s=settings.link_wait_s,
        )

    def ceiling_s(self, attempt: int) -> float:
        """The upper bound of the jittered pause after failed attempt number `attempt` (1-based)."""
        exponent = min(max(0, attempt - 1), MAX_EXPONENT)
        return min(self.max_delay_s, self.base_s * float(2**exponent))

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Full jitter under the ceiling; a Retry-After (capped) is a floor."""
        delay = rng.uniform(0.0, self.ceiling_s(attempt))
        if retry_after_s is not None:
            delay = max(delay, min(max(retry_after_s, 0.0), MAX_RETRY_AFTER_S))
        return delay

    def next_delay_s(
        self,
        attempts: int,
        age_s: float,
        retry_after_s: float | None,
        rng: random.Random,
        *,
        waiting_for_link: bool = False,
    ) -> float | None:
        """The pause before the next try after `attempts` failed ones, or None to give up."""
        if attempts >= self.max_attempts:
            return None
        delay = self.delay_s(attempts, retry_after_s, rng)
        window = self.link_wait_s if waiting_for_link else self.window_s
        if age_s + delay > window:
            return None
        return delay
