"""An `each` element's identity (`bridge.mapping.elements`): the same element gets the same id
wherever the list puts it; equal elements get distinct ones; any parsed value has one."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.mapping.elements import element_ids
from tests.test_mapping_plan import build

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@given(st.lists(JSON, max_size=8), st.randoms(use_true_random=False))
def test_an_element_keeps_its_id_in_any_order(elements: list[Any], rng: Any) -> None:
    ids = element_ids(elements)
    assert len(set(ids)) == len(elements)  # equal elements too: each its own
    order = list(range(len(elements)))
    rng.shuffle(order)
    shuffled = element_ids([elements[i] for i in order])
    # Distinct elements keep their own id; equal ones share theirs out (interchangeable).
    assert sorted(shuffled) == sorted(ids)
    for position, i in enumerate(order):
        if elements.count(elements[i]) == 1:
            assert shuffled[position] == ids[i]


def test_ids_follow_the_value_not_its_spelling() -> None:
    a, b, c = element_ids([{"id": 1, "x": [1, 2]}, {"x": [1, 2], "id": 1}, {"id": 1, "x": [2, 1]}])
    assert a.startswith("e")
    assert "." not in a
    assert b == a + ".1"  # the same value with its keys in another order: an equal element
    assert c.split(".")[0] != a


def test_values_json_cannot_hold_have_ids_too() -> None:
    odd: list[Any] = [
        {"n": 2**80},  # past 64 bits
        {1: "a", "b": 2},  # a key that is not text
        {"when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "amount": Decimal("1.10")},
    ]
    ids = element_ids(odd)
    assert len(set(ids)) == 3
    assert ids == element_ids(odd)


async def test_each_commands_carry_their_elements_ids_and_do_not_show_them(tmp_path: Path) -> None:
    each = build(tmp_path, {"each": "sort_by(items, &id)", "lead": {"data": {"n": "id"}}}, "each")
    items = [{"id": 2}, {"id": 1}]
    plan = await each.plan({"items": items})
    assert [c.element for c in plan.commands] == element_ids([{"id": 1}, {"id": 2}])
    assert "element" not in plan.commands[0].model_dump()  # `mappings test` and dead letters show none
    single = build(tmp_path, {"lead": {"data": {"n": "id"}}}, "single")
    assert (await single.plan({"id": 1})).commands[0].element is None
