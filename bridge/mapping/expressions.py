"""JMESPath, compiled once: syntax and function names checked at load, fast paths for plain fields.

    check_expression("a.[")             # ValueError: invalid JMESPath at position 2: ...
    expr = Compiler().compile("a.b")    # a callable: expr({"a": {"b": 1}}) == 1

A chain of plain field names (`form_response.hidden.email`, `@`) becomes direct dict lookups with
JMESPath's semantics (a missing key or a non-object gives None); everything else becomes nested
closures (`jmespath_closures`), several times faster than jmespath's tree interpreter.
Runtime errors (a function given the wrong type) propagate as `jmespath.exceptions.JMESPathError`;
the caller names the field and never the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfunctions

from bridge.mapping.jmespath_closures import ClosureCompiler, field_chain, field_getter

Expr = Callable[[Any], Any]

_FUNCTIONS: dict[str, Any] = jfunctions.Functions.FUNCTION_TABLE


def truthy(value: Any) -> bool:
    """JMESPath truth: null, false, "", [] and {} are false; everything else (0 too) is true."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def parse(text: str) -> Any:
    """The AST of `text`; ValueError with a one-line message and position when it is not valid."""
    try:
        ast: Any = jmespath.compile(text).parsed
    except jexc.IncompleteExpressionError:
        raise ValueError(f"invalid JMESPath: incomplete expression (at position {len(text)})") from None
    except jexc.LexerError as exc:
        raise ValueError(f"invalid JMESPath at position {exc.lexer_position}: {exc.message}") from None
    except jexc.ParseError as exc:
        token = f" near {exc.token_value!r}" if exc.token_value not in (None, "") else ""
        raise ValueError(f"invalid JMESPath at position {exc.lex_position}: {exc.msg}{token}") from None
    except jexc.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath: {type(exc).__name__}") from None
    _check_functions(ast)
    return ast


def check_expression(text: str) -> str:
    """Validator form of `parse`: gives the text back."""
    parse(text)
    return text


def _check_functions(node: dict[str, Any]) -> None:
    if node.get("type") == "function_expression":
        name = node["value"]
        spec = _FUNCTIONS.get(name)
        if spec is None:
            raise ValueError(f"unknown JMESPath function {name}()")
        signature = spec["signature"]
        given = len(node["children"])
        if signature and signature[-1].get("variadic"):
            if given < len(signature):
                raise ValueError(f"{name}() takes at least {_arguments(len(signature))}, got {given}")
        elif given != len(signature):
            raise ValueError(f"{name}() takes {_arguments(len(signature))}, got {given}")
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child)


def _arguments(count: int) -> str:
    return f"{count} argument{'' if count == 1 else 's'}"


class Compiler:
    """Compiles expressions for one mapping into closures (`jmespath_closures`)."""

    def __init__(self) -> None:
        self._closures = ClosureCompiler()

    def compile(self, text: str) -> Expr:
        ast = parse(text)
        chain = field_chain(ast)
        if chain is not None:
            return field_getter(chain)
        return self._closures.compile(ast)
