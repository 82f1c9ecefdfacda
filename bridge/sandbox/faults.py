"""Fault injection: what can go wrong with the upstream, on demand and reproducibly.

Each eligible request draws one number from a `random.Random` (seeded when `seed` is set) and gets
at most one fault, the rates being consecutive slices of [0, 1):

    error            500 at once, nothing done
    rate_limit       429 with `Retry-After: retry_after_s`, nothing done
    timeout          hangs `timeout_s`, then 504, nothing done
    lost_response    the write is done (and its idempotency record stored), then it hangs
                     `timeout_s` and answers 502: the client gave up and must retry with the same key

`latency_ms` is added to every /connect request. Faults hit writes only unless `apply_to_reads`.
With every rate at 0 no number is drawn and the check is one attribute read.
"""

from __future__ import annotations

import enum
import random

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_limit_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    timeout_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    lost_response_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(default=0.0, ge=0.0, description="added to every /connect request")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of an injected 429")
    timeout_s: float = Field(default=10.0, ge=0.0, description="hang of a timeout or lost response")
    seed: int | None = Field(default=None, description="seed for reproducible draws")
    apply_to_reads: bool = Field(default=False, description="also fault GET requests")

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultConfig:
        total = self.error_rate + self.rate_limit_rate + self.timeout_rate + self.lost_response_rate
        if total > 1.0 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")
        return self


class Fault(enum.Enum):
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    LOST_RESPONSE = "lost_response"


class FaultInjector:
    """Draws the fault (or none) for one request under a FaultConfig."""

    __slots__ = ("_rng", "_thresholds", "active", "config", "latency_s")

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.latency_s = config.latency_ms / 1000.0
        self._rng = random.Random(config.seed)
        thresholds: list[tuple[float, Fault]] = []
        upper = 0.0
        for rate, fault in (
            (config.error_rate, Fault.ERROR),
            (config.rate_limit_rate, Fault.RATE_LIMIT),
            (config.timeout_rate, Fault.TIMEOUT),
            (config.lost_response_rate, Fault.LOST_RESPONSE),
        ):
            if rate > 0.0:
                upper += rate
                thresholds.append((upper, fault))
        self._thresholds = tuple(thresholds)
        self.active = bool(thresholds)

    def draw(self, *, write: bool) -> Fault | None:
        if not self.active or not (write or self.config.apply_to_reads):
            return None
        roll = self._rng.random()
        for upper, fault in self._thresholds:
            if roll < upper:
                return fault
        return None
