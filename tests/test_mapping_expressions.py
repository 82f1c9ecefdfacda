"""Compiled JMESPath (closures and field fast paths) gives exactly what jmespath's interpreter gives."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping.expressions import Compiler, check_expression

EXPRESSIONS = [
    "a",
    "a.b",
    "a.b.c",
    '"a b".c',
    "@",
    "`1`",
    "'x'",
    "`null`",
    "a[0]",
    "a[-1]",
    "a[1:3]",
    "a[::-1]",
    "a[]",
    "a[][]",
    "a[*].b",
    "a.*",
    "*.b",
    "a.*.b",
    "a[?b=='x']",
    "a[?b=='x'].c",
    "a[?b=='x'] | [0]",
    "a[?b=='x'] | [0].c",
    "a[?b.c=='x'] | [0].d",
    "a[?b.c=='x'] | [0].d[0]",
    "a[?b=='x'] | [1]",
    "a[?b==`1`]",
    "a[?b==`true`]",
    "a[?b==`0`] | [0]",
    "a[?b > `1`]",
    "a[?b < c]",
    "a[?b != 'x']",
    "a[?b]",
    "a[?!b]",
    "a[?b == null] | [0]",
    "a[?b=='x'][] | [0]",
    "a[?b.c == `null`]",
    "a[?b.c != 'x'] | [0]",
    "a || b",
    "a && b",
    "!a",
    "!a.b",
    "[a, b]",
    "{x: a, y: b.c}",
    "a | b",
    "a | [0]",
    "a == b",
    "a == `0`",
    "a != `1`",
    "a == null",
    "a.b == 'x'",
    "a.b == `false`",
    "a < b",
    "a >= `1`",
    "length(a)",
    "to_string(a)",
    "not_null(a, b, 'none')",
    "sort_by(a, &b)",
    "max_by(a, &b)",
    "a[?contains(b, 'x')] | [0]",
    "a[?b=='x'] | [0] | to_string(@)",
    "a[?b=='x'] | [0].to_string(@)",
    "join(',', a)",
    "keys(a)",
    "values(a)",
    "type(a)",
    "a[?b=='x'] | length(@)",
]

keys = st.sampled_from(["a", "b", "c", "d", "a b"])
scalars = st.sampled_from([None, True, False, 0, 1, 2, 1.0, 1.5, -3, "x", "y", "", "0", "a"])
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _outcome(function: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", function(data)
    except Exception as exc:  # both sides must fail the same way
        return "error", type(exc).__name__


def _typed(value: Any) -> Any:
    """Make True and 1 (and 1 and 1.0) different for the comparison."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@pytest.mark.parametrize("expression", EXPRESSIONS)
@settings(max_examples=40, deadline=None)
@given(data=json_values | st.dictionaries(keys, json_values, max_size=4))
def test_compiled_equals_interpreter(expression: str, data: Any) -> None:
    compiled = Compiler().compile(expression)
    parsed = jmespath.compile(expression)
    mine, theirs = _outcome(compiled, data), _outcome(parsed.search, data)
    assert mine[0] == theirs[0], (mine, theirs)
    assert _typed(mine[1]) == _typed(theirs[1])


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        (
            "answers[?field.ref=='email'] | [0].email",
            {"answers": [{"field": {"ref": "email"}, "email": "e"}]},
            "e",
        ),
        ("answers[?field.ref=='email'] | [0].email", {"answers": [{"field": {"ref": "x"}}]}, None),
        ("answers[?field.ref=='email'] | [0] | to_string(@)", {"answers": []}, "null"),
        ("a[?b==`1`] | [0].c", {"a": [{"b": True, "c": 1}, {"b": 1, "c": 2}]}, 2),
    ],
)
def test_known_shapes(expression: str, data: Any, expected: Any) -> None:
    assert Compiler().compile(expression)(data) == expected


def test_check_expression_gives_the_text_back() -> None:
    assert check_expression("a.b") == "a.b"
    with pytest.raises(ValueError, match="position"):
        check_expression("a.[")
