"""The table answer's shape is not published (CONTRACT §2): what is not as expected is missing."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.connect.tables import TableInfo

GOOD_STATE = {"id": "s1", "name": "New", "default": True}
GOOD_FIELD = {"id": "f1", "name": "Budget"}


@pytest.mark.parametrize(
    "body",
    [
        [],
        "a table",
        None,
        {"leadStates": 5, "customFields": "budget"},
        {"leadStates": {"id": "s1"}, "customFields": None},
        {"leadStates": [None, 3, "New", {"name": "No id"}], "customFields": [[], {"id": "f9"}]},
    ],
)
def test_an_answer_of_another_shape_resolves_nothing_and_raises_nothing(body: Any) -> None:
    info = TableInfo.from_response("t1", body)
    assert info.state_id("New") is None
    assert info.default_state is None
    assert info.field_id("Budget") is None


def test_the_expected_shape_with_extras_resolves() -> None:
    body = {"id": "t1", "leadStates": [GOOD_STATE, 7], "customFields": [GOOD_FIELD], "more": {"x": 1}}
    info = TableInfo.from_response("t1", body)
    assert info.state_id("new") == "s1"
    assert info.default_state == "s1"
    assert info.field_id("budget") == "f1"
