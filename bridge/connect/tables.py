"""Lead Pools (tables): their states and custom fields, read tolerantly and cached per table.

The table response's exact shape is not published: we read `leadStates` (id, name, default) and
`customFields` (id, name) and ignore anything else. Names in mappings resolve case-insensitively;
an id resolves to itself. An exact name wins over one that differs only in case; a name that two
states (or two fields) share, but for case, is an error, never one of them picked at random. A
name that does not resolve refreshes the cached table once (the pool may have changed) before it
is an error, unless that copy is itself such a refresh, less than `MIN_REFRESH_S` old: a batch
whose elements all name a state the pool lacks (a CRM stage the mapping does not know yet)
re-reads the table once, not once or twice per element.
"""

from __future__ import annotations

import asyncio
import functools
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import MappingError


def name_key(name: str) -> str:
    """How names compare: case-insensitively (casefold), ignoring surrounding whitespace, with
    accents composed (NFC), so "qualifié " typed with a combining accent finds "Qualifié"."""
    return unicodedata.normalize("NFC", name.strip()).casefold()


class _Names:
    """Names -> ids: an exact name first, else the one name that compares equal (`name_key`).
    A name two items share (exactly or only but for case) resolves to no id but is `ambiguous`."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.exact: dict[str, set[str]] = {}
        self.folded: dict[str, set[str]] = {}
        for name, item_id in items:
            self.exact.setdefault(name, set()).add(item_id)
            self.folded.setdefault(name_key(name), set()).add(item_id)

    def _ids(self, name: str) -> set[str]:
        return self.exact.get(name) or self.folded.get(name_key(name)) or set()

    def get(self, name: str) -> str | None:
        ids = self._ids(name)
        return next(iter(ids)) if len(ids) == 1 else None

    def ambiguous(self, name: str) -> bool:
        return len(self._ids(name)) > 1


@dataclass(frozen=True)
class TableInfo:
    id: str
    states_by_name: _Names = field(default_factory=lambda: _Names([]))
    state_ids: frozenset[str] = frozenset()
    default_state: str | None = None
    fields_by_name: _Names = field(default_factory=lambda: _Names([]))
    field_ids: frozenset[str] = frozenset()

    @classmethod
    def from_response(cls, table_id: str, body: Any) -> TableInfo:
        """What the table's answer says of its states and custom fields; anything of another
        shape than expected (not an object, a list that is not a list, an item that is not an
        object) counts as missing, never as an error."""
        lead_states, custom_fields = _items(body, "leadStates"), _items(body, "customFields")
        states: list[tuple[str, str]] = []
        default: str | None = None
        for state in lead_states:
            if not isinstance(state, dict) or state.get("id") is None:
                continue
            state_id = str(state["id"])
            if isinstance(state.get("name"), str):
                states.append((state["name"], state_id))
            if state.get("default") is True and default is None:
                default = state_id
        fields: list[tuple[str, str]] = []
        for custom in custom_fields:
            if (
                isinstance(custom, dict)
                and custom.get("id") is not None
                and isinstance(custom.get("name"), str)
            ):
                fields.append((custom["name"], str(custom["id"])))
        field_ids = frozenset(str(c["id"]) for c in custom_fields if isinstance(c, dict) and c.get("id"))
        state_ids = frozenset(str(s["id"]) for s in lead_states if isinstance(s, dict) and s.get("id"))
        return cls(table_id, _Names(states), state_ids, default, _Names(fields), field_ids)

    def state_id(self, name_or_id: str) -> str | None:
        if name_or_id in self.state_ids:
            return name_or_id
        return self.states_by_name.get(name_or_id)

    def field_id(self, name_or_id: str) -> str | None:
        if name_or_id in self.field_ids:
            return name_or_id
        return self.fields_by_name.get(name_or_id)


MIN_REFRESH_S = 1.0  # a name that does not resolve re-reads a table refreshed longer ago than this


class TableCache:
    """Per-process cache of TableInfo with a TTL; `fetch(table_id)` returns the raw table JSON.
    One read per table at a time: callers that need it meanwhile (a worker's deliveries in
    flight, all missing the cache when it expires or at start) share the read in progress."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[dict[str, Any]]],
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._clock = clock
        # table id -> (info, when its read began, whether read by a refresh)
        self._entries: dict[str, tuple[TableInfo, float, bool]] = {}
        self._reading: dict[str, asyncio.Future[TableInfo]] = {}
        self._generation: dict[str, int] = {}  # bumped by `invalidate`

    async def get(self, table_id: str, *, refresh: bool = False) -> TableInfo:
        """The table as cached; with `refresh` (a name did not resolve), read again, unless the
        copy is itself a refresh less than MIN_REFRESH_S old. `invalidate` forces the next read
        (an upstream 400). A read in progress is joined (it began after any cached copy)."""
        cached = self._entries.get(table_id)
        if cached:
            info, read_at, by_refresh = cached
            age_s = self._clock() - read_at
            if (age_s < MIN_REFRESH_S and by_refresh) if refresh else age_s < self._ttl_s:
                return info
        reading = self._reading.get(table_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read(table_id, refresh))
            self._reading[table_id] = reading
            reading.add_done_callback(functools.partial(self._read_done, table_id))
        # Shielded: a caller cut (a drain, a job's time limit) leaves the read to the others.
        return await asyncio.shield(reading)

    async def _read(self, table_id: str, refresh: bool) -> TableInfo:
        began, generation = self._clock(), self._generation.get(table_id, 0)
        info = TableInfo.from_response(table_id, await self._fetch(table_id))
        if self._generation.get(table_id, 0) == generation:  # not invalidated meanwhile
            self._entries[table_id] = (info, began, refresh)
        return info

    def _read_done(self, table_id: str, reading: asyncio.Future[TableInfo]) -> None:
        if self._reading.get(table_id) is reading:
            del self._reading[table_id]
        if not reading.cancelled():
            reading.exception()  # its callers have it; retrieved even if every one was cut

    def invalidate(self, table_id: str) -> None:
        """Forget the table: the next `get` reads it anew (not joining a read begun before)."""
        self._entries.pop(table_id, None)
        self._reading.pop(table_id, None)
        self._generation[table_id] = self._generation.get(table_id, 0) + 1

    async def resolve_state(self, table_id: str, name_or_id: str | None) -> str:
        """The state id for a name or id, or the table's default state when None."""
        info = await self.get(table_id)
        resolved = info.default_state if name_or_id is None else info.state_id(name_or_id)
        if resolved is None:
            info = await self.get(table_id, refresh=True)
            resolved = info.default_state if name_or_id is None else info.state_id(name_or_id)
        if resolved is None:
            if name_or_id is not None and info.states_by_name.ambiguous(name_or_id):
                raise MappingError(
                    f"table {table_id} has more than one lead state named {name_or_id!r} "
                    "(but for case or spaces): give its exact name or its id"
                )
            if name_or_id is None:
                # the table's, not one element's: every command without a state fails alike
                raise MappingError(f"table {table_id} has no default lead state", whole=True)
            raise MappingError(f"table {table_id} has no lead state {name_or_id!r}")
        return resolved

    async def resolve_fields(self, table_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Custom field names or ids -> ids, keeping values; unknown names are a MappingError."""
        if not values:
            return {}
        info = await self.get(table_id)
        if any(info.field_id(name) is None for name in values):
            info = await self.get(table_id, refresh=True)
        resolved: dict[str, Any] = {}
        for name, value in values.items():
            field_id = info.field_id(name)
            if field_id is None and info.fields_by_name.ambiguous(name):
                raise MappingError(
                    f"table {table_id} has more than one custom field named {name!r} "
                    "(but for case or spaces): give its exact name or its id",
                    whole=True,  # the names are the mapping's: every command fails alike
                )
            if field_id is None:
                raise MappingError(f"table {table_id} has no custom field {name!r}", whole=True)
            resolved[field_id] = value
        return resolved


def _items(body: Any, name: str) -> list[Any]:
    found = body.get(name) if isinstance(body, dict) else None
    return found if isinstance(found, list) else []
