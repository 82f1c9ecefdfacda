"""Lead Pools (tables) of the sandbox: their schema, the seeded demo pool, and lookups by id.

The seed lives in `seed.json` beside this module (package data) and is read when an app is
created, never at import. A table is answered by `GET /connect/tables[/{id}]` as
`{id, name, leadStates: [{id, name, default}], customFields: [{id, name, type}]}`.
"""

from __future__ import annotations

from importlib import resources

import orjson
from pydantic import BaseModel, ConfigDict, model_validator

SEED_FILE = "seed.json"


class LeadStateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    default: bool = False


class CustomFieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    type: str


class TableSpec(BaseModel):
    """One Lead Pool, spelled as the Connect API answers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    leadStates: list[LeadStateSpec]
    customFields: list[CustomFieldSpec] = []

    @model_validator(mode="after")
    def _one_default_and_unique_ids(self) -> TableSpec:
        if sum(state.default for state in self.leadStates) != 1:
            raise ValueError("a table needs exactly one lead state with default: true")
        ids = [s.id for s in self.leadStates] + [f.id for f in self.customFields]
        if len(ids) != len(set(ids)):
            raise ValueError("lead state and custom field ids must be unique")
        return self


class SeedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tables: list[TableSpec]


class Table:
    """A TableSpec with the lookups the request handlers need, and its answer pre-serialised."""

    __slots__ = ("default_state_id", "document", "field_ids", "id", "json", "spec", "state_ids")

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.id = spec.id
        self.state_ids = frozenset(state.id for state in spec.leadStates)
        self.default_state_id = next(state.id for state in spec.leadStates if state.default)
        self.field_ids = frozenset(field.id for field in spec.customFields)
        self.document = spec.model_dump(mode="json")
        self.json = orjson.dumps(self.document)


def load_seed_tables() -> list[TableSpec]:
    """The demo Lead Pool(s) from the packaged seed file."""
    raw = resources.files(__package__ or "bridge.sandbox").joinpath(SEED_FILE).read_bytes()
    return list(SeedFile.model_validate_json(raw).tables)
