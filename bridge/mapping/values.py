"""Value specs compiled into plain closures: `compile_value(spec, field, compiler)(element)`.

A compiled value gives the result, or `OMIT` when the field is to be left out (its `when` was
falsy, or it resolved to null with `on_null: omit`). With `on_null: delete` a null result is None,
which the command sends as JSON null. The steps, in order (CONTRACT §6):

    when -> path | value | template -> then (transforms) -> map -> default -> required -> on_null

Errors are `MappingError`s that name the field, never a value from the payload.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Final

from bridge.errors import MappingError
from bridge.mapping.expressions import Compiler, Expr, truthy
from bridge.mapping.models import ValueObject, template_parts, transform_parts
from bridge.mapping.transforms import build_transform, stringify


class _Omit:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()

Evaluator = Callable[[Any], Any]
_ERRORS = (ValueError, TypeError, KeyError, AttributeError)  # jmespath's errors are ValueErrors


def expression_failed(field: str, exc: Exception) -> MappingError:
    return MappingError(f"{field}: expression failed ({type(exc).__name__})")


def guarded(expr: Expr, field: str) -> Expr:
    """`expr` whose runtime errors become MappingErrors naming `field`."""

    def run(element: Any) -> Any:
        try:
            return expr(element)
        except _ERRORS as exc:
            raise expression_failed(field, exc) from None

    return run


def compile_value(spec: str | ValueObject, field: str, compiler: Compiler) -> Evaluator:
    if isinstance(spec, str):
        expr = compiler.compile(spec)

        def plain(element: Any) -> Any:
            try:
                value = expr(element)
            except _ERRORS as exc:
                raise expression_failed(field, exc) from None
            return OMIT if value is None else value

        return plain
    return _compile_object(spec, field, compiler)


def _compile_object(spec: ValueObject, field: str, compiler: Compiler) -> Evaluator:
    source = _compile_source(spec, field, compiler)
    steps = [build_transform(*transform_parts(item)) for item in spec.then]
    when = compiler.compile(spec.when) if spec.when is not None else None
    table = spec.map
    default = spec.default
    copy_default = isinstance(default, dict | list)
    required = spec.required
    null_result: Any = None if spec.on_null == "delete" else OMIT

    def evaluate(element: Any) -> Any:
        if when is not None:
            try:
                condition = when(element)
            except _ERRORS as exc:
                raise expression_failed(f"{field}.when", exc) from None
            if not truthy(condition):
                return OMIT
        try:
            value = source(element)
        except _ERRORS as exc:
            raise expression_failed(field, exc) from None
        if value is not None and steps:
            try:
                for step in steps:
                    value = step(value)
                    if value is None:
                        break
            except (*_ERRORS, ArithmeticError):
                value = None  # a transform that cannot convert a value gives null
        if table is not None and value is not None:
            value = None if isinstance(value, dict | list) else table.get(stringify(value) or "")
        if value is None:
            value = copy.deepcopy(default) if copy_default else default
            if value is None:
                if required:
                    raise MappingError(f"{field} is required but resolved to null")
                return null_result
        return value

    return evaluate


def _compile_source(spec: ValueObject, field: str, compiler: Compiler) -> Evaluator:
    if spec.path is not None:
        return compiler.compile(spec.path)  # its errors are named by the caller
    if spec.template is not None:
        return _compile_template(spec, field, compiler)
    literal = spec.value
    if isinstance(literal, dict | list):
        return lambda element: copy.deepcopy(literal)
    return lambda element: literal


def _compile_template(spec: ValueObject, field: str, compiler: Compiler) -> Evaluator:
    assert spec.template is not None
    parts: list[str | Evaluator] = []
    for is_part, text in template_parts(spec.template):
        if is_part:
            parts.append(compile_value(spec.with_[text], f"{field}.with.{text}", compiler))
        else:
            parts.append(text)
    if not any(callable(part) for part in parts):
        constant = "".join(part for part in parts if isinstance(part, str))
        return lambda element: constant

    def render(element: Any) -> str | None:
        out: list[str] = []
        found = False
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(element)
            if value is OMIT or value is None:
                continue
            text = stringify(value) or ""
            if text:
                found = True
                out.append(text)
        return "".join(out) if found else None

    return render
