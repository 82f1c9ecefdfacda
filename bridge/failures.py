"""The commands of one delivery that failed for good, each on its own (the worker's `Failures`).

With `each`, one element the mapping cannot map (a state the pool lacks), or whose body the
upstream refuses, does not hold up the rest of its batch: the worker sets it aside here and goes
on, then dead-letters the delivery with `Failures.reason()`, which names each failed command by
its place in the batch. A later command for the record of a failed one is held back (never sent
ahead of it), and on a delivery's first run, after `Failures.REFUSALS` upstream refusals in a row
the rest are not tried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bridge.mapping.commands import ElementFailure, LeadCommand

__all__ = ["Failure", "Failures"]


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    index: int
    reason: str
    kind: str
    status: int | None
    command: LeadCommand | None  # None: the element got no command (a failure of its planning)


class Failures:
    """The commands of one delivery that failed for good, each on its own: the others go on, so
    that one element the mapping cannot map (a state the pool lacks) or the upstream refuses
    does not hold up the rest of its batch until a replay. A later command for a record whose
    command failed is held (not sent ahead of it) and fails with it."""

    SHOWN = 10  # failures a reason spells out; the rest are counted
    # Upstream refusals in a row after which the rest are not tried, with `capped` (a delivery's
    # first run): a mapping whose every body the upstream refuses (a value of the wrong type)
    # costs five refused calls, not two or three per element of its batch. A retry or a replay
    # (after the fix) tries them all: refusals that recur (records the upstream will never
    # take) must not keep the rest of the batch from going, run after run.
    REFUSALS = 5

    def __init__(
        self, planned: int, link: str, failures: Sequence[ElementFailure] = (), *, capped: bool = False
    ) -> None:
        self.planned = planned
        self.items: list[Failure] = []
        self._records: dict[tuple[str, str], int] = {}  # failed record -> its first failed command
        self._capped = capped
        self._refused = 0  # upstream refusals since the last command that went
        for f in failures:
            self.add(f.index, link, f.key, f.reason, f.kind, f.status, None)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def first(self) -> Failure:
        return min(self.items, key=lambda f: f.index)

    def add(
        self,
        index: int,
        link: str,
        key: str | None,
        reason: str,
        kind: str,
        status: int | None,
        command: LeadCommand | None,
    ) -> None:
        self.items.append(Failure(index, reason, kind, status, command))
        if key is not None:
            # its earliest: a planning failure (all known before any command goes) may come later
            self._records[(link, key)] = min(index, self._records.get((link, key), index))
        if kind == "upstream" and command is not None:
            self._refused += 1

    def went(self) -> None:
        """A command went through."""
        self._refused = 0

    def hold_back(self, command: LeadCommand) -> bool:
        """Whether `command` is not to be sent, recorded then as failed: it comes after a failed
        command of its record (not sent ahead of it), or (`capped`) the upstream refused the
        `REFUSALS` commands before it."""
        before = self._records.get((command.link, command.key)) if command.key is not None else None
        if before is not None and before < command.index:
            reason = f"not sent: command {before}, for the same record, failed"
        elif self._capped and self._refused >= self.REFUSALS:
            reason = f"not sent: the upstream refused the {self._refused} commands before it"
        else:
            return False
        self.items.append(Failure(command.index, reason, "held", None, command))
        return True

    def reason(self, *, stopped: bool = False) -> str:
        """The dead letter's reason: the one failure as it is, or each failure by command.
        `stopped`: the delivery stopped at another failure (`Deliverer._failed`), so not every
        other command was tried."""
        items = sorted(self.items, key=lambda f: f.index)
        if self.planned == 1 and len(items) == 1 and not stopped:
            return items[0].reason
        listed = "; ".join(f"command {f.index}: {f.reason}" for f in items[: self.SHOWN])
        more = f"; and {len(items) - self.SHOWN} more" if len(items) > self.SHOWN else ""
        if stopped:
            went = "before it stopped"
        else:
            went = "the others went through" if len(items) < self.planned else "none went through"
        return f"{len(items)} of {self.planned} commands failed for good ({went}): {listed}{more}"
