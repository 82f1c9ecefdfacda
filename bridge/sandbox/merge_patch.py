"""RFC 7396 JSON Merge Patch: the one pure function that applies a patch to a JSON document.

    merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}})  ->  {"a": {"b": "d"}}

A patch that is not an object replaces the target whole; in an object patch, `None` (JSON null)
removes the key and any other value is merged in recursively. Neither argument is mutated; the
result may share unchanged sub-documents with them, so treat it as read-only or copy it.
"""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """Return `target` with the merge patch `patch` applied (RFC 7396 section 2)."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
