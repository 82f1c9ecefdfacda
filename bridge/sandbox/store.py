"""SandboxState: everything one sandbox app holds, in memory, and the operations that change it.

    tables        Lead Pools by id (seeded at app creation; `add_table` for tests)
    entries       the leads by id, in creation order
    events        the automation-event log (EventLog)
    idempotency   stored answers by Idempotency-Key, and the per-key locks
    faults        the FaultConfig in force (assigning one rebuilds the injector and its random)

Handlers run on one event loop and no operation here awaits, so each is atomic. `reset()` clears
entries, events and idempotency records and turns every fault off; the tables stay.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.sandbox import events as ev
from bridge.sandbox.entries import Entry, new_entry, patched_entry
from bridge.sandbox.faults import FaultConfig, FaultInjector
from bridge.sandbox.idempotency import IdempotencyStore
from bridge.sandbox.responses import SandboxError
from bridge.sandbox.tables import Table, TableSpec


def utc_now_iso() -> str:
    """Now, as the upstream writes timestamps: ISO-8601 UTC with milliseconds and `Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SandboxState:
    def __init__(
        self,
        api_key: str,
        *,
        tables: Iterable[TableSpec] = (),
        faults: FaultConfig | None = None,
        clock: Callable[[], str] = utc_now_iso,
    ) -> None:
        if not api_key:
            raise ValueError("the sandbox needs a non-empty API key")
        self._api_key = api_key.encode()
        self._clock = clock
        self.tables: dict[str, Table] = {}
        self._tables_json = b"[]"
        for spec in tables:
            self.add_table(spec)
        self.entries: dict[str, Entry] = {}
        self.events = ev.EventLog()
        self.idempotency = IdempotencyStore()
        self.injector = FaultInjector(faults or FaultConfig())

    def __repr__(self) -> str:  # never the API key
        counts = f"tables={len(self.tables)}, entries={len(self.entries)}, events={len(self.events)}"
        return f"SandboxState({counts})"

    # -- configuration -------------------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        return self.injector.config

    @faults.setter
    def faults(self, config: FaultConfig) -> None:
        self.injector = FaultInjector(config)

    def add_table(self, spec: TableSpec) -> Table:
        table = Table(spec)
        self.tables[table.id] = table
        self._tables_json = orjson.dumps([t.document for t in self.tables.values()])
        return table

    def reset(self) -> None:
        self.entries.clear()
        self.events.clear()
        self.idempotency.clear()
        self.faults = FaultConfig()

    # -- requests --------------------------------------------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """Accept `Authorization: Bearer <api_key>`, else SandboxError(401)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key):
            raise SandboxError(401, "unauthorized", {"WWW-Authenticate": "Bearer"})

    def tables_json(self) -> bytes:
        return self._tables_json

    def table(self, table_id: str) -> Table:
        table = self.tables.get(table_id)
        if table is None:
            raise SandboxError(404, "table not found")
        return table

    def entry(self, entry_id: str) -> Entry:
        entry = self.entries.get(entry_id)
        if entry is None:
            raise SandboxError(404, "table entry not found")
        return entry

    def create_entry(self, body: Any) -> Entry:
        now = self._clock()
        entry = new_entry(body, self.tables, entry_id=str(uuid.uuid4()), now=now)
        self.entries[entry["id"]] = entry
        for event_type in (ev.ENTRY_ADDED, ev.LEAD_STATE_CHANGED):
            self.events.record(
                event_type,
                table_id=entry["tableId"],
                entry_id=entry["id"],
                lead_state_id=entry["leadStateId"],
                previous_lead_state_id=None,
                at=now,
            )
        return entry

    def patch_entry(self, entry_id: str, patch: Any) -> Entry:
        entry = self.entry(entry_id)
        now = self._clock()
        updated = patched_entry(entry, patch, self.tables[entry["tableId"]], now=now)
        self.entries[entry_id] = updated
        if updated["leadStateId"] != entry["leadStateId"]:
            self.events.record(
                ev.LEAD_STATE_CHANGED,
                table_id=updated["tableId"],
                entry_id=entry_id,
                lead_state_id=updated["leadStateId"],
                previous_lead_state_id=entry["leadStateId"],
                at=now,
            )
        return updated
