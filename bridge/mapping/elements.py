"""The identity of an `each` element within its delivery: what its command is recorded done as,
and what its idempotency key names, instead of its position.

A position names another element once the list changes order: a mapping fixed between two runs
of a delivery (`each: items` → `each: sort_by(items, &id)`, or a filter dropped) would have a
rerun take an element for the one done at its old place, skip it, and send the other under that
element's key. The element's own value does not move: the same stored body parses to the same
values on every run. So an element is named by a digest of its value (as `each` gives it, before
`enrich`), in canonical JSON (keys sorted); equal elements by the same digest and their rank
among their equals (`.1`, `.2`, …), which is the same on every run whatever their order.

What it does not survive: a mapping whose `each` now gives other values for the same records (a
projection such as `items[].{id: id}` where it gave whole items): those are new elements, sent
again under new keys (an upsert finds its link and patches; a `create` creates).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import orjson

PREFIX = "e"  # no position is written with it: `slot` tells the two apart


def element_ids(elements: Sequence[Any]) -> list[str]:
    """One identity per element, in the elements' order; equal elements get distinct ones."""
    seen: dict[str, int] = {}
    ids: list[str] = []
    for element in elements:
        base = PREFIX + hashlib.blake2b(_canonical(element), digest_size=8).hexdigest()
        rank = seen.get(base, 0)
        seen[base] = rank + 1
        ids.append(f"{base}.{rank}" if rank else base)
    return ids


def _canonical(element: Any) -> bytes:
    """The element as JSON with sorted keys; values JSON cannot hold as text (`str`), and as a
    last resort (keys that are not text, integers past 64 bits) Python's own, equally stable."""
    try:
        return orjson.dumps(element, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:
        try:
            return json.dumps(element, sort_keys=True, default=str, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            return repr(element).encode()
