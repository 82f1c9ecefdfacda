"""Reading one mapping file: YAML with line numbers kept, `${VAR}` substituted in every string.

`read_source(path, environ)` gives a `Source`: the plain data (dicts, lists, scalars), the line of
every key path (`("lead", "data", "email")` -> 12), the variables it used and the problems met
(YAML syntax, duplicate keys, missing variables), already as `file:line: field.path: message`.
`Source.line_of(loc)` finds the line for a pydantic error location, skipping the union tags and
`[key]` markers pydantic puts into it, and `Source.problem(loc, message)` formats one problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from bridge.mapping.env import substitute

Loc = tuple[str | int, ...]
MAX_NODES = 1_000_000  # values in one file, aliases expanded (a shipped mapping has a few hundred)
MERGE_TAG, VALUE_TAG, STR_TAG = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value", "tag:yaml.org,2002:str"


@dataclass
class Source:
    path: Path
    data: Any = None
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    env_used: dict[str, str] = field(default_factory=dict, repr=False)
    env_missing: set[Loc] = field(default_factory=set)  # paths whose variable was missing
    # the text of a key YAML read as another type (`on:` is true, `1:` a number), by its path
    key_texts: dict[tuple[Any, ...], str] = field(default_factory=dict, repr=False)

    def resolve(self, loc: tuple[Any, ...]) -> tuple[Loc, int]:
        """(the field path that exists in the data, plus a trailing missing key; its line)."""
        node: Any = self.data
        kept: list[str | int] = []
        for part in loc:
            # a dict key may be a YAML number or boolean (`1:`, `on:`): its path part is its text
            in_dict = isinstance(node, dict) and isinstance(part, str | int) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if in_dict or in_list:
                node = node[part]
                if not in_list and not isinstance(part, str):
                    part = self.key_texts.get((*kept, part), str(part))
                kept.append(part)
            elif isinstance(part, str) and not part.startswith(("<", "[")):
                # a missing key (`verify.secret` without `verify:`): reported at its parent's line
                kept.append(part)
                node = None
            # anything else is a union tag or a `[key]` marker: not part of the file
        path = tuple(kept)
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return path, line
        return path, 1

    def problem(self, loc: tuple[Any, ...], message: str) -> str:
        path, line = self.resolve(loc)
        return f"{self.path}:{line}: {format_path(path) or '(file)'}: {message}"


def format_path(path: tuple[Any, ...]) -> str:
    """("lead", "data", "email", "then", 0) -> 'lead.data.email.then[0]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_source(path: Path, environ: Mapping[str, str]) -> Source:
    source = Source(path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        source.problems.append(f"{path}:1: (file): cannot read: {type(exc).__name__}")
        return source
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            source.problems.append(f"{path}:1: (file): the file is empty")
            return source
        source.data = _Builder(source, loader, environ).build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        source.problems.append(f"{path}:{line}: (yaml): {what or 'invalid YAML'}")
    except yaml.YAMLError as exc:
        source.problems.append(f"{path}:1: (yaml): {type(exc).__name__}")
    finally:
        loader.dispose()
    return source


class _Builder:
    """Turns composed YAML nodes into plain data, recording lines and substituting variables."""

    def __init__(self, source: Source, loader: yaml.SafeLoader, environ: Mapping[str, str]) -> None:
        self.source = source
        self.loader = loader
        self.environ = environ
        self._merges: dict[int, list[tuple[yaml.Node, yaml.Node]]] = {}  # by mapping node: `_pairs`
        self._building: set[int] = set()  # the collection nodes being built (an alias of one: a cycle)
        self._built = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self._count(1, node)
        self.source.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in self._building:  # `a: &a {b: *a}`: no end (RecursionError)
                raise yaml.MarkedYAMLError(
                    problem="a value contains itself (an alias of it inside it)", problem_mark=node.start_mark
                )
            self._building.add(id(node))
            try:
                return self._collection(node, loc)
            finally:
                self._building.discard(id(node))
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, date):  # an unquoted YAML timestamp: keep it as the ISO text
            value = value.isoformat()
        elif isinstance(value, bytes) or (isinstance(value, float) and not math.isfinite(value)):
            # !!binary, .nan, .inf: no JSON value (NaN would be sent as null: a delete on a patch)
            self.source.problems.append(
                f"{self.source.path}:{node.start_mark.line + 1}: {format_path(loc) or '(file)'}: "
                f"{'binary data' if isinstance(value, bytes) else 'NaN or infinity'} is not a JSON value"
            )
        if isinstance(value, str):
            value = self._substitute(value, loc, node.start_mark.line + 1)
        return value

    def _collection(self, node: yaml.MappingNode | yaml.SequenceNode, loc: Loc) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, index)) for index, item in enumerate(node.value)]
        # YAML merge keys (<<): the mapping's own keys win, then each merged mapping's as it
        # resolves itself (its own keys, then those it merges), an earlier one before a later.
        entries: list[tuple[Any, yaml.Node, yaml.Node, bool]] = []
        for key_node, value_node in self._pairs(node, own=False):
            entries.append((self._key(key_node, loc), key_node, value_node, False))
        for key_node, value_node in self._pairs(node, own=True):
            entries.append((self._key(key_node, loc), key_node, value_node, True))
        own_keys = {key for key, _, _, own in entries if own}
        result: dict[Any, Any] = {}
        for key, key_node, value_node, own in entries:
            if not own and (key in own_keys or key in result):
                continue  # overridden, by the mapping's own key or an earlier merged mapping's
            if not isinstance(key, str):
                self.source.key_texts[(*loc, key)] = str(key_node.value)
            child = (*loc, key if isinstance(key, str) else str(key_node.value))
            if own and key in result:
                line = key_node.start_mark.line + 1
                self.source.problems.append(
                    f"{self.source.path}:{line}: {format_path(child)}: duplicate key {key!r}"
                )
            self.source.lines[child] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, child)
        return result

    def _pairs(self, node: yaml.MappingNode, *, own: bool) -> list[tuple[yaml.Node, yaml.Node]]:
        """The mapping's own pairs (`own`), or those its merge keys bring, in order of precedence."""
        if own:
            return [(k, v) for k, v in node.value if k.tag != MERGE_TAG]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                continue
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in items:
                if not isinstance(item, yaml.MappingNode):
                    raise yaml.MarkedYAMLError(
                        problem="a merge key (<<) takes a mapping or a list of mappings",
                        problem_mark=item.start_mark,
                    )
                pairs += self._resolved(item)
        return pairs

    def _resolved(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """A merged mapping's pairs as it resolves (own first), once per node: aliases of
        aliases do not multiply the work; a pair already there (the same key node) is not
        repeated."""
        cached = self._merges.get(id(node))
        if cached is not None:
            return cached
        if id(node) in self._building:
            raise yaml.MarkedYAMLError(problem="a mapping merges itself (<<)", problem_mark=node.start_mark)
        self._building.add(id(node))
        try:
            seen: set[int] = set()
            pairs = []
            for key_node, value_node in self._pairs(node, own=True) + self._pairs(node, own=False):
                if id(key_node) not in seen:
                    seen.add(id(key_node))
                    pairs.append((key_node, value_node))
        finally:
            self._building.discard(id(node))
        self._count(len(pairs), node)
        self._merges[id(node)] = pairs
        return pairs

    def _count(self, values: int, node: yaml.Node) -> None:
        """`values` more built; past MAX_NODES an error (aliases of aliases: a short file can
        expand exponentially)."""
        self._built += values
        if self._built > MAX_NODES:
            raise yaml.MarkedYAMLError(
                problem=f"the file expands to more than {MAX_NODES} values (aliases included)",
                problem_mark=node.start_mark,
            )

    def _key(self, key_node: yaml.Node, loc: Loc) -> Any:
        if key_node.tag == VALUE_TAG:  # `=` as a key: text (what PyYAML's flatten_mapping does)
            key_node.tag = STR_TAG
        key = self.loader.construct_object(key_node, deep=True)
        if isinstance(key, date):  # an unquoted date as a key (a `map` from dates): its text
            key = key.isoformat()
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.MarkedYAMLError(problem="a key must be a scalar", problem_mark=key_node.start_mark)
        if isinstance(key, str):
            key = self._substitute(key, loc, key_node.start_mark.line + 1)
        return key

    def _substitute(self, text: str, loc: Loc, line: int) -> str:
        result, missing, used = substitute(text, self.environ)
        self.source.env_used.update(used)
        if missing:
            self.source.env_missing.add(loc)
        for name in missing:
            self.source.problems.append(
                f"{self.source.path}:{line}: {format_path(loc) or '(file)'}: "
                f"environment variable {name} is not set and has no default"
            )
        return result
