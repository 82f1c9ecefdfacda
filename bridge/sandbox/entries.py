"""Table entries (leads): the upstream's rules for building one on create and merge-patching it.

Pure functions over plain dicts; they raise SandboxError(400) for any body the upstream refuses:

- create takes `{tableId, data, customFieldData?, leadStateId, interestedInAppointmentTypeId?}`;
  `leadStateId` is required and must be a state of the table; `firstOpenedAt` and `followUpDate`
  are refused (set them with a PATCH), as is any other key;
- a patch is an RFC 7396 merge patch over `data, customFieldData, leadStateId, firstOpenedAt,
  followUpDate, interestedInAppointmentTypeId`; null deletes (a deleted `data` or
  `customFieldData` becomes `{}`, a deleted scalar `null`), but `leadStateId` cannot be removed;
- `customFieldData` is keyed by custom-field id and unknown ids are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bridge.sandbox.merge_patch import merge_patch
from bridge.sandbox.responses import SandboxError
from bridge.sandbox.tables import Table

Entry = dict[str, Any]

CREATE_FIELDS = frozenset(
    {"tableId", "data", "customFieldData", "leadStateId", "interestedInAppointmentTypeId"}
)
DATE_FIELDS = ("firstOpenedAt", "followUpDate")
PATCH_FIELDS = frozenset(
    {"data", "customFieldData", "leadStateId", "interestedInAppointmentTypeId", *DATE_FIELDS}
)


def _bad(message: str) -> SandboxError:
    return SandboxError(400, message)


def _require_object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"{what} must be a JSON object")
    return body


def _check_keys(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(key for key in body if key not in allowed)
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(unknown)}")


def _check_state(table: Table, state_id: Any) -> str:
    if state_id is None:
        raise _bad("leadStateId is required")
    if not isinstance(state_id, str):
        raise _bad("leadStateId must be a string")
    if state_id not in table.state_ids:
        raise _bad("unknown leadStateId for this table")
    return state_id


def _check_custom_fields(table: Table, values: Any) -> dict[str, Any]:
    fields = _require_object(values, "customFieldData")
    unknown = sorted(key for key in fields if key not in table.field_ids)
    if unknown:
        raise _bad(f"unknown custom field id(s): {', '.join(unknown)}")
    return fields


def _check_optional_string(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _bad(f"{name} must be a string or null")


def _check_date(name: str, value: Any) -> None:
    if value is None:
        return
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise _bad(f"{name} must be an ISO-8601 date-time or null") from None


def new_entry(body: Any, tables: Mapping[str, Table], *, entry_id: str, now: str) -> Entry:
    """The entry a create body makes, or SandboxError(400)."""
    body = _require_object(body, "the request body")
    for name in DATE_FIELDS:
        if name in body:
            raise _bad(f"{name} is not accepted on create; set it with a PATCH")
    _check_keys(body, CREATE_FIELDS)
    table_id = body.get("tableId")
    if not isinstance(table_id, str):
        raise _bad("tableId is required")
    table = tables.get(table_id)
    if table is None:
        raise _bad("unknown tableId")
    data = _require_object(body.get("data", {}), "data")
    custom = body.get("customFieldData")
    custom = {} if custom is None else _check_custom_fields(table, custom)
    state_id = _check_state(table, body.get("leadStateId"))
    appointment_type = body.get("interestedInAppointmentTypeId")
    _check_optional_string("interestedInAppointmentTypeId", appointment_type)
    return {
        "id": entry_id,
        "tableId": table_id,
        "data": data,
        "customFieldData": custom,
        "leadStateId": state_id,
        "firstOpenedAt": None,
        "followUpDate": None,
        "interestedInAppointmentTypeId": appointment_type,
        "createdAt": now,
        "updatedAt": now,
    }


def patched_entry(entry: Entry, patch: Any, table: Table, *, now: str) -> Entry:
    """`entry` with the merge patch applied (a new dict), or SandboxError(400)."""
    patch = _require_object(patch, "a merge patch")
    _check_keys(patch, PATCH_FIELDS)
    if "leadStateId" in patch:
        _check_state(table, patch["leadStateId"])
    if "data" in patch and patch["data"] is not None:
        _require_object(patch["data"], "data")
    if "customFieldData" in patch and patch["customFieldData"] is not None:
        _check_custom_fields(table, patch["customFieldData"])
    if "interestedInAppointmentTypeId" in patch:
        _check_optional_string("interestedInAppointmentTypeId", patch["interestedInAppointmentTypeId"])
    for name in DATE_FIELDS:
        if name in patch:
            _check_date(name, patch[name])

    current = {name: entry[name] for name in PATCH_FIELDS}
    merged = merge_patch(current, patch)
    updated: Entry = {
        "id": entry["id"],
        "tableId": entry["tableId"],
        "data": merged.get("data", {}),
        "customFieldData": merged.get("customFieldData", {}),
        "leadStateId": merged["leadStateId"],
        "firstOpenedAt": merged.get("firstOpenedAt"),
        "followUpDate": merged.get("followUpDate"),
        "interestedInAppointmentTypeId": merged.get("interestedInAppointmentTypeId"),
        "createdAt": entry["createdAt"],
        "updatedAt": entry["updatedAt"],
    }
    if any(updated[name] != entry[name] for name in PATCH_FIELDS):
        updated["updatedAt"] = now
    return updated
