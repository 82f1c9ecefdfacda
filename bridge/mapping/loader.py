"""Loading mapping files: a file or a folder of them, all checked before any is used.

    mappings = load_mappings(Path("mappings"), os.environ)   # MappingValidationError(problems)
    mapping = mappings.get("website-contact")

A folder contributes every `*.yaml` / `*.yml` directly in it (hidden files skipped; `schema.json`
and `*.env` are not mappings). Every problem of every file is collected, one line each as
`file:line: field.path: message`, so one `validate` run shows them all. `load_all` gives problems
and warnings without raising (for the `validate` command); `load_mappings` raises on any problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.errors import MappingValidationError
from bridge.mapping.compiled import CompiledMapping
from bridge.mapping.models import MappingFile, ValueObject, known_keys
from bridge.mapping.source import Source, read_source
from bridge.providers.base import Provider
from bridge.providers.registry import build_provider, provider_class

MAPPING_SUFFIXES = (".yaml", ".yml")


class MappingSet:
    """The loaded mappings by name, plus the non-fatal warnings met while loading them."""

    def __init__(
        self,
        mappings: Iterable[CompiledMapping] = (),
        warnings: Iterable[str] = (),
        files: Iterable[Path] = (),
    ) -> None:
        self._by_name = {mapping.name: mapping for mapping in mappings}
        self.warnings: list[str] = list(warnings)
        self.files: tuple[Path, ...] = tuple(files)

    def get(self, name: str) -> CompiledMapping | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def __iter__(self) -> Iterator[CompiledMapping]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"MappingSet({self.names!r})"


@dataclass
class LoadResult:
    mappings: list[CompiledMapping] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def mapping_files(path: Path) -> list[Path]:
    """The mapping files at `path`: the file itself, or the folder's *.yaml/*.yml, sorted."""
    if path.is_dir():
        return sorted(
            child
            for child in path.iterdir()
            if child.suffix in MAPPING_SUFFIXES and not child.name.startswith(".") and child.is_file()
        )
    return [path]


def load_mappings(path: Path, environ: Mapping[str, str]) -> MappingSet:
    """Load and check every mapping at `path`; any problem raises MappingValidationError."""
    result = load_all(path, environ)
    if result.problems:
        raise MappingValidationError(result.problems)
    return MappingSet(result.mappings, result.warnings, result.files)


def load_all(path: Path, environ: Mapping[str, str]) -> LoadResult:
    """Load what can be loaded and collect every problem and warning (never raises for content)."""
    result = LoadResult()
    if not path.exists():
        result.problems.append(f"{path}: no such file or folder")
        return result
    result.files = mapping_files(path)
    if not result.files:
        result.warnings.append(f"{path}: no mapping files (*.yaml, *.yml) in this folder")
    seen: dict[str, Path] = {}
    for file in result.files:
        loaded = _load_file(file, environ)
        result.problems.extend(sorted(loaded.problems, key=lambda problem: _line_of(problem, file)))
        result.warnings.extend(loaded.warnings)
        mapping = loaded.mapping
        if mapping is None:
            continue
        if mapping.name in seen:
            result.problems.append(
                loaded.source.problem(
                    ("name",), f"name {mapping.name!r} is already used by {seen[mapping.name]}"
                )
            )
            continue
        seen[mapping.name] = file
        result.mappings.append(mapping)
    return result


def _line_of(problem: str, file: Path) -> int:
    """The line number in a `file:line: field: message` problem (0 if there is none)."""
    line = problem.removeprefix(f"{file}:").split(":", 1)[0]
    return int(line) if line.isdigit() else 0


@dataclass
class _Loaded:
    source: Source
    mapping: CompiledMapping | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _load_file(file: Path, environ: Mapping[str, str]) -> _Loaded:
    source = read_source(file, environ)
    loaded = _Loaded(source=source, problems=list(source.problems))
    if source.data is None:
        return loaded
    if not isinstance(source.data, dict):
        loaded.problems.append(source.problem((), "a mapping file is a YAML mapping of keys to values"))
        return loaded
    try:
        spec = MappingFile.model_validate(source.data)
    except ValidationError as exc:
        loaded.problems.extend(_pydantic_problems(source, (), exc, known_keys()))
        return loaded
    loaded.problems.extend(_semantic_problems(source, spec))
    provider = None if source.problems else _build_provider(source, spec, loaded.problems)
    loaded.warnings.extend(_warnings(source, spec, provider))
    if provider is not None and not loaded.problems:
        loaded.mapping = CompiledMapping(spec, provider, file, source.env_used)
    return loaded


def _semantic_problems(source: Source, spec: MappingFile) -> list[str]:
    problems: list[str] = []
    if spec.action in ("patch", "upsert") and spec.key is None:
        problems.append(
            source.problem(
                ("action",),
                f"action {spec.action} needs a `key` (the source record's id, linking it to its entry)",
            )
        )
    if spec.order_scope is not None and spec.order is None:
        problems.append(source.problem(("order_scope",), "order_scope without order: nothing to compare"))
    state = spec.lead.state
    if isinstance(state, ValueObject) and state.on_null == "delete":
        problems.append(
            source.problem(
                ("lead", "state", "on_null"), "a lead always has a state: on_null: delete is not allowed"
            )
        )
    return problems


def _build_provider(source: Source, spec: MappingFile, problems: list[str]) -> Provider[Any] | None:
    try:
        cls = provider_class(spec.provider)
    except KeyError as exc:
        problems.append(source.problem(("provider",), str(exc.args[0])))
        return None
    try:
        return build_provider(spec.provider, dict(spec.verify))
    except ValidationError as exc:
        hints = set(cls.Options.model_fields)
        problems.extend(_pydantic_problems(source, ("verify",), exc, hints))
    except (ValueError, TypeError) as exc:
        problems.append(source.problem(("verify",), str(exc) or type(exc).__name__))
    return None


def _warnings(source: Source, spec: MappingFile, provider: Provider[Any] | None) -> list[str]:
    warnings: list[str] = []
    if provider is not None and provider.insecure:
        warnings.append(
            source.problem(("provider",), f"provider {spec.provider} accepts unverified requests")
        )
    lead = spec.lead
    fields: list[tuple[tuple[str, ...], Any]] = [
        *((("lead", "data", name), value) for name, value in lead.data.items()),
        *((("lead", "custom_fields", name), value) for name, value in lead.custom_fields.items()),
        *(
            (("lead", name), getattr(lead, name))
            for name in ("follow_up_date", "first_opened_at", "appointment_type")
        ),
    ]
    for loc, value in fields:
        if isinstance(value, ValueObject) and value.on_null == "delete" and value.when is None:
            warnings.append(
                source.problem(
                    (*loc, "on_null"),
                    "on_null: delete without a `when`: a missing path is null too, so this clears the field "
                    "on every event that lacks it",
                )
            )
    return warnings


def _pydantic_problems(
    source: Source, prefix: tuple[str, ...], exc: ValidationError, hints: set[str]
) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = (*prefix, *error["loc"])
        if source.resolve(loc)[0] in source.env_missing:
            continue  # already reported as the missing variable it comes from
        problems.append(source.problem(loc, _message(error, hints)))
    return problems


def _message(error: Any, hints: set[str]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1]) if error["loc"] else "?"
        import difflib  # only for a mapping with an error: not loaded by a running process

        close = difflib.get_close_matches(key, sorted(hints), n=1, cutoff=0.7)
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "string_type" and error["loc"] and error["loc"][-1] == "[key]":
        return (
            "a name must be text: quote it (YAML reads unquoted yes, no, on, off, true, false, "
            "null and numbers as other types)"
        )
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message
