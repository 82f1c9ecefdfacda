"""RFC 7396 merge patch: every example of the RFC's Appendix A, plus purity."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.sandbox import merge_patch

EXAMPLES = json.loads(
    (Path(__file__).parent / "fixtures" / "sandbox" / "rfc7396_appendix_a.json").read_text()
)


def test_all_fifteen_appendix_a_examples_are_in_the_table() -> None:
    assert len(EXAMPLES) == 15


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"A.{i + 1}" for i in range(len(EXAMPLES))])
def test_appendix_a(example: dict[str, Any]) -> None:
    assert merge_patch(example["original"], example["patch"]) == example["result"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"A.{i + 1}" for i in range(len(EXAMPLES))])
def test_inputs_are_not_mutated(example: dict[str, Any]) -> None:
    original, patch = copy.deepcopy(example["original"]), copy.deepcopy(example["patch"])
    merge_patch(original, patch)
    assert (original, patch) == (example["original"], example["patch"])


def test_nested_merge_keeps_untouched_siblings() -> None:
    target = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": 4}
    assert merge_patch(target, {"a": {"c": {"d": None, "x": 5}}}) == {
        "a": {"b": 1, "c": {"e": 3, "x": 5}},
        "f": 4,
    }
