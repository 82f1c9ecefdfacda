"""The automation-event log: what the real upstream would fire (and e-mail or text a person for).

    {seq, type, tableId, entryId, leadStateId, previousLeadStateId, at}

`seq` starts at 1 and grows by one per event (again from 1 after a reset), so `after(seq)` is a
slice. A create logs `table.entry.added` then `table.entry.leadState.changed` (previous state
null); a patch logs `table.entry.leadState.changed` only when the state really changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ENTRY_ADDED = "table.entry.added"
LEAD_STATE_CHANGED = "table.entry.leadState.changed"

Event = dict[str, Any]


class EventLog:
    """Append-only, in order; iterate it or index it like a list of event dicts."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: list[Event] = []

    def record(
        self,
        type_: str,
        *,
        table_id: str,
        entry_id: str,
        lead_state_id: str | None,
        previous_lead_state_id: str | None,
        at: str,
    ) -> Event:
        event: Event = {
            "seq": len(self._events) + 1,
            "type": type_,
            "tableId": table_id,
            "entryId": entry_id,
            "leadStateId": lead_state_id,
            "previousLeadStateId": previous_lead_state_id,
            "at": at,
        }
        self._events.append(event)
        return event

    def after(self, seq: int = 0) -> list[Event]:
        """The events whose seq is greater than `seq`."""
        return self._events[max(seq, 0) :]

    def clear(self) -> None:
        self._events.clear()

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __getitem__(self, index: int) -> Event:
        return self._events[index]
