"""Body parsers shared by providers. Each failure is an InvalidBody (400), never a crash."""

from __future__ import annotations

from typing import Any

import orjson

from bridge.errors import InvalidBody

MAX_JSON_DEPTH = 64


def parse_json(body: bytes) -> Any:
    """Parse a JSON body; nesting deeper than MAX_JSON_DEPTH levels is refused."""
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):
        raise InvalidBody("body is not valid JSON") from None
    # A body with no more than MAX_JSON_DEPTH brackets cannot be nested deeper: skip the walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidBody(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Is any container nested more than `limit` levels deep? Iterative, stops early."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
