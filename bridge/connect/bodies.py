"""The Connect API request bodies of a lead command, names resolved to ids against its table.

    await create_body(command, tables)     # POST /connect/table_entries
    after_create(command)                  # the PATCH right after a create ({} when none)
    await patch_body(command, tables)      # PATCH /connect/table_entries/{id} (merge patch)

Used by the worker to deliver, and by `leadbridge mappings test --resolve` to show what would be
sent. An unknown lead state or custom field raises MappingError (from `TableCache`).
"""

from __future__ import annotations

from typing import Any

from bridge.connect.tables import TableCache
from bridge.mapping.commands import LeadCommand

# Create does not accept these two: they are applied by a patch right after it, same command.
SET_AFTER_CREATE = ("followUpDate", "firstOpenedAt")


async def create_body(command: LeadCommand, tables: TableCache) -> dict[str, Any]:
    """A create drops null values (nothing to delete yet); the state defaults to the table's."""
    body: dict[str, Any] = {
        "tableId": command.table,
        "data": {k: v for k, v in command.data.items() if v is not None},
        "leadStateId": await tables.resolve_state(command.table, command.state),
    }
    fields = {k: v for k, v in command.custom_fields.items() if v is not None}
    if fields:
        body["customFieldData"] = await tables.resolve_fields(command.table, fields)
    appointment = command.extras.get("interestedInAppointmentTypeId")
    if appointment is not None:
        body["interestedInAppointmentTypeId"] = appointment
    return body


def after_create(command: LeadCommand) -> dict[str, Any]:
    """The fields a create cannot set, for the patch that follows it (empty: no patch)."""
    return {k: v for k, v in command.extras.items() if k in SET_AFTER_CREATE and v is not None}


async def patch_body(command: LeadCommand, tables: TableCache) -> dict[str, Any]:
    """A merge patch: only what the command sets; None stays null (a delete)."""
    patch: dict[str, Any] = {}
    if command.data:
        patch["data"] = dict(command.data)
    if command.custom_fields:
        patch["customFieldData"] = await tables.resolve_fields(command.table, dict(command.custom_fields))
    if command.state is not None:
        patch["leadStateId"] = await tables.resolve_state(command.table, command.state)
    patch.update(command.extras)
    return patch
