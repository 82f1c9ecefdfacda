"""Value specs and transforms as tables (tests/fixtures/mapping/values.yaml, transforms.yaml)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from bridge.errors import MappingError
from bridge.mapping.expressions import Compiler, truthy
from bridge.mapping.models import TransformSpec, ValueSpec, template_parts, transform_parts
from bridge.mapping.transforms import build_transform, epoch_ms_text, stringify, to_number
from bridge.mapping.values import OMIT, compile_value

FIXTURES = Path(__file__).parent / "fixtures" / "mapping"
VALUE_CASES: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "values.yaml").read_text())
TRANSFORM_CASES: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "transforms.yaml").read_text())
VALUE_SPEC: TypeAdapter[Any] = TypeAdapter(ValueSpec)
TRANSFORM: TypeAdapter[Any] = TypeAdapter(TransformSpec)


def _same(got: Any, want: Any) -> bool:
    """Equal and of the same JSON type (1 is not True, 5000 is not 5000.0 in output)."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    return type(got) is type(want) and got == want


@pytest.mark.parametrize("case", VALUE_CASES, ids=[case["id"] for case in VALUE_CASES])
def test_value_spec(case: dict[str, Any]) -> None:
    evaluate = compile_value(VALUE_SPEC.validate_python(case["spec"]), "lead.data.f", Compiler())
    if "error" in case:
        with pytest.raises(MappingError) as caught:
            evaluate(case["element"])
        assert caught.value.message == case["error"]
        assert not caught.value.retryable
        return
    result = evaluate(case["element"])
    if case.get("omit"):
        assert result is OMIT
    else:
        assert _same(result, case["out"]), result


@pytest.mark.parametrize("case", TRANSFORM_CASES, ids=[f"{c['t']}:{c['in']!r}" for c in TRANSFORM_CASES])
def test_transform(case: dict[str, Any]) -> None:
    transform = build_transform(*transform_parts(TRANSFORM.validate_python(case["t"])))
    assert _same(transform(case["in"]), case["out"])


def test_every_transform_has_cases_including_a_null_result() -> None:
    from bridge.mapping.transforms import TRANSFORM_NAMES

    names = {c["t"] if isinstance(c["t"], str) else next(iter(c["t"])) for c in TRANSFORM_CASES}
    assert names == set(TRANSFORM_NAMES)
    failing = {
        c["t"] if isinstance(c["t"], str) else next(iter(c["t"])) for c in TRANSFORM_CASES if c["out"] is None
    }
    assert failing == set(TRANSFORM_NAMES)


@pytest.mark.parametrize("bad", ["lowercase", "", {"trim": {}}, {"phone_e164": {"region": "XX"}}, 5])
def test_unknown_or_malformed_transform_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        TRANSFORM.validate_python(bad)


def test_value_copies_literal_containers() -> None:
    evaluate = compile_value(VALUE_SPEC.validate_python({"value": {"tags": ["a"]}}), "f", Compiler())
    first = evaluate({})
    first["tags"].append("changed")
    assert evaluate({}) == {"tags": ["a"]}


def test_transform_exception_becomes_null(monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.mapping.transforms as transforms

    def broken(value: Any) -> Any:
        raise ArithmeticError("boom")

    monkeypatch.setitem(transforms._SIMPLE, "number", broken)
    evaluate = compile_value(
        VALUE_SPEC.validate_python({"path": "n", "then": ["number"], "default": -1}), "f", Compiler()
    )
    assert evaluate({"n": "1"}) == -1


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        ("{a} {b}", [(True, "a"), (False, " "), (True, "b")]),
        ("x{{y}}z", [(False, "x{y}z")]),
        ("{ a }", [(True, "a")]),
        ("", []),
    ],
)
def test_template_parts(template: str, parts: list[tuple[bool, str]]) -> None:
    assert template_parts(template) == parts


@pytest.mark.parametrize("template", ["{a", "a}", "{}", "{a}{"])
def test_template_parts_refuses_broken_templates(template: str) -> None:
    with pytest.raises(ValueError, match="position"):
        template_parts(template)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("x", "x"),
        (True, "true"),
        (3, "3"),
        (3.0, "3"),
        (-0.5, "-0.5"),
        (math.inf, "inf"),
        ([1], "[1]"),
    ],
)
def test_stringify(value: Any, text: str | None) -> None:
    assert stringify(value) == text


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("2025-07-01T10:15:00Z", "1751364900000"),
        (1751364900, "1751364900000"),
        (1751364900123, "1751364900123"),
        ("1970-01-01T00:00:00.0015Z", "1.5"),
        ("1969-12-31T23:59:59.9985Z", "-1.5"),
        ("never", None),
        (None, None),
    ],
)
def test_epoch_ms_text(value: Any, millis: str | None) -> None:
    assert epoch_ms_text(value) == millis
    if millis is not None:
        assert float(millis) == pytest.approx(float(millis))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (0, True),
        ("0", True),
        ([0], True),
    ],
)
def test_truthy_follows_jmespath(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


def test_number_of_huge_integral_float_stays_float() -> None:
    assert to_number(2.0**60) == 2.0**60
    assert isinstance(to_number(2.0**60), float)


@pytest.mark.parametrize("text", ["123456789012345678901234", "-99999999999999999999"])
def test_number_past_64_bits_can_still_be_sent(text: str) -> None:
    """orjson, which writes the request body, refuses an int past 64 bits (TypeError: the whole
    delivery was dead-lettered as an internal error); a JSON body's own such number is a float."""
    import orjson

    number = to_number(text)
    assert number == pytest.approx(float(text))
    assert orjson.loads(orjson.dumps({"n": number})) == {"n": float(text)}
    assert build_transform("integer")(text) is None
