"""A validated mapping, compiled once: `CompiledMapping.plan(payload)` gives the lead commands.

    plan = await mapping.plan(payload, enrich=fetcher)   # Plan(ignored=..., commands=[...])

Per delivery: `when` over the payload (falsy: ignored); `each` (one command per list element,
at most `max_commands`); per element an optional `enrich` fetch whose JSON appears beside the
element's keys under `as`; then `key`, `order` (normalised to epoch milliseconds as decimal text),
and the lead fields. Nothing is validated again here: commands are built with `model_construct`,
since every value was checked or produced by the compiled steps. `MappingError` messages name
fields, never payload values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from bridge.errors import DeliveryError, MappingError, UpstreamError, dead_reason, failure_kind
from bridge.mapping.commands import EXTRA_FIELDS, ElementFailure, LeadCommand, Plan
from bridge.mapping.elements import element_ids
from bridge.mapping.expressions import Compiler, Expr, truthy
from bridge.mapping.models import URL_PART, EnrichSpec, MappingFile, ValueObject
from bridge.mapping.transforms import epoch_ms_text, stringify
from bridge.mapping.values import OMIT, Evaluator, compile_value, guarded
from bridge.providers.base import Provider

# With `isolate`: enrich fetches refused for good in a row (403s, 404s) after which the batch's
# other elements are not fetched, on a delivery's first run (`plan(enrich_refusals=)`): a source
# refusing every record costs five fetches, not one per element. A retry or replay fetches all.
ENRICH_REFUSALS = 5


class EnrichFetcher(Protocol):
    """GETs an enrich URL and gives its JSON; the worker's retries and errors live behind it."""

    async def __call__(self, url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any: ...


def _text(value: Any, field: str) -> str | None:
    """A key or state as text: numbers without '.0'; '' counts as null; objects are refused."""
    if isinstance(value, dict | list):
        raise MappingError(f"{field}: must be a string or a number, not {_kind(value)}")
    text = stringify(value)
    return text if text else None


class CompiledEnrich:
    """The `enrich:` step: the URL for an element, and the element with the fetched record beside it.

    The worker's fetcher may read `timeout_s` (per attempt) and `headers` (already substituted).
    A non-object element (an id in a list) becomes `{as: record}`.
    """

    def __init__(self, spec: EnrichSpec, compiler: Compiler) -> None:
        self.url_template = spec.url
        self.headers: dict[str, str] = dict(spec.headers)
        self.as_key = spec.as_
        self.timeout_s = spec.timeout_s
        # (expression text, compiled, whether it lies in the URL's path: before any '?' or '#')
        self._parts: list[str | tuple[str, Expr, bool]] = []
        position = 0
        in_path = True
        for match in URL_PART.finditer(spec.url):
            literal = spec.url[position : match.start()]
            self._parts.append(literal)
            in_path = in_path and "?" not in literal and "#" not in literal
            text = match.group(1).strip()
            self._parts.append((text, guarded(compiler.compile(text), "enrich.url"), in_path))
            position = match.end()
        self._parts.append(spec.url[position:])

    def url_for(self, element: Any) -> str:
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text, expr, in_path = part
            value = _text(expr(element), f"enrich.url {{{text}}}")
            if value is None:
                raise MappingError(f"enrich.url: {{{text}}} resolved to null")
            if in_path and value in (".", ".."):
                # quote() leaves dots alone, and every HTTP client (httpx, aiohttp's yarl) removes
                # dot segments: a payload value ".." would move the GET, with the mapping's
                # secret headers, to another path of the source (`/leads/{id}` -> `/`). A
                # percent-encoded %2E%2E is no answer: many servers decode it and resolve it.
                raise MappingError(f"enrich.url: {{{text}}} resolved to a dot segment ('.' or '..')")
            out.append(quote(value, safe=""))
        return "".join(out)

    async def apply(self, element: Any, fetcher: EnrichFetcher) -> Any:
        record = await fetcher(self.url_for(element), self.headers, timeout_s=self.timeout_s)
        if isinstance(element, dict):
            return {**element, self.as_key: record}
        return {self.as_key: record}


class CompiledMapping:
    """One mapping, ready to plan. Attributes are read-only by convention."""

    def __init__(
        self,
        spec: MappingFile,
        provider: Provider[Any],
        source_path: Path,
        env_values: Mapping[str, str] | None = None,
    ) -> None:
        compiler = Compiler()
        self.spec = spec
        self.name = spec.name
        self.provider_name = spec.provider
        self.provider = provider
        self.table = spec.table
        self.action = spec.action
        self.link = spec.link or spec.name
        self.rate_limit_per_s = spec.rate_limit.per_s if spec.rate_limit else None
        self.source_path = source_path
        # values of the ${VAR}s this file used: only for redacting them from dry-run output
        self.env_values: Mapping[str, str] = dict(env_values or {})
        self._when = guarded(compiler.compile(spec.when), "when") if spec.when else None
        self._each = guarded(compiler.compile(spec.each), "each") if spec.each else None
        self._key = compile_value(spec.key, "key", compiler) if spec.key is not None else None
        self._order = compile_value(spec.order, "order", compiler) if spec.order is not None else None
        self._order_scope = (
            compile_value(spec.order_scope, "order_scope", compiler) if spec.order_scope is not None else None
        )
        self.enrich = CompiledEnrich(spec.enrich, compiler) if spec.enrich else None
        lead = spec.lead
        self._state = compile_value(lead.state, "lead.state", compiler) if lead.state is not None else None
        self._data = _compile_fields(lead.data, "lead.data", compiler)
        self._custom_fields = _compile_fields(lead.custom_fields, "lead.custom_fields", compiler)
        extras: dict[str, str | ValueObject | None] = {
            "follow_up_date": lead.follow_up_date,
            "first_opened_at": lead.first_opened_at,
            "appointment_type": lead.appointment_type,
        }
        self._extras = [
            (EXTRA_FIELDS[name], compile_value(value, f"lead.{name}", compiler))
            for name, value in extras.items()
            if value is not None
        ]
        self._needs_key = spec.action in ("patch", "upsert")

    def __repr__(self) -> str:
        return f"CompiledMapping(name={self.name!r}, provider={self.provider_name!r}, action={self.action!r})"

    async def plan(
        self,
        payload: Any,
        *,
        enrich: EnrichFetcher | None = None,
        max_commands: int = 100,
        skip: Callable[[int, str | None], bool] | None = None,
        isolate: bool = False,
        enrich_refusals: int | None = None,
    ) -> Plan:
        """`skip(index, element_id)`: an element whose command an earlier run of the delivery
        applied; it gets no command, and no `enrich` fetch. With `isolate` (the worker), an `each`
        element that fails for good (a mapping error, an enrich source refusing its record) is
        left out with its reason in `Plan.failures`, so that it does not hold up the others; a
        failure that may pass (an enrich fetch to retry) still raises. `enrich_refusals`: after
        that many enrich fetches refused for good in a row, the rest are not fetched (failures
        too); None: no limit."""
        if self._when is not None and not truthy(self._when(payload)):
            return Plan.model_construct(ignored=True, commands=[])
        if self._each is None:
            elements = [payload]
        else:
            found = self._each(payload)
            if not isinstance(found, list):
                raise MappingError(f"each: did not give a list (got {_kind(found)})")
            if len(found) > max_commands:
                raise MappingError(
                    f"each: {len(found)} elements, over the limit of {max_commands} per delivery"
                )
            elements = found
        if self.enrich is not None and enrich is None and elements:
            raise MappingError("enrich: this mapping fetches records, but no fetcher was given")
        ids = element_ids(elements) if self._each is not None else None
        commands: list[LeadCommand] = []
        failures: list[ElementFailure] = []
        refused = 0  # enrich fetches refused for good in a row
        for index, element in enumerate(elements):
            element_id = ids[index] if ids is not None else None
            if skip is not None and skip(index, element_id):
                # Fetched again, its record could now be gone (404) or refused: that would
                # dead-letter the delivery for a lead already delivered, and with it the
                # elements still owed, for good (a replay would fetch it again).
                continue
            if enrich_refusals is not None and refused >= enrich_refusals:
                reason = f"not fetched: the enrich source refused the {refused} elements before it"
                failures.append(self._failure(index, element_id, element, reason, "held"))
                continue
            try:
                if self.enrich is not None:
                    assert enrich is not None
                    element = await self.enrich.apply(element, enrich)
                    refused = 0
                commands.append(self.command(index, element, element_id))
            except DeliveryError as exc:
                if not isolate or ids is None or exc.retryable or exc.whole:
                    raise
                if isinstance(exc, UpstreamError):  # here, the enrich fetch's
                    refused += 1
                reason, kind = dead_reason(exc), failure_kind(exc)
                failures.append(self._failure(index, element_id, element, reason, kind, exc.status))
        return Plan.model_construct(ignored=False, commands=commands, failures=failures, size=len(elements))

    def _failure(
        self,
        index: int,
        element_id: str | None,
        element: Any,
        reason: str,
        kind: str,
        status: int | None = None,
    ) -> ElementFailure:
        """An element set aside (`isolate`), with its record's key where that much resolves."""
        key: str | None = None
        if self._key is not None:
            with contextlib.suppress(DeliveryError):
                raw = self._key(element)
                key = None if raw is OMIT else _text(raw, "key")
        return ElementFailure.model_construct(
            index=index, element=element_id, key=key, reason=reason, kind=kind, status=status
        )

    def command(self, index: int, element: Any, element_id: str | None = None) -> LeadCommand:
        """The lead command for one (enriched) element; `element_id`: its identity (`each`)."""
        key: str | None = None
        if self._key is not None and (raw := self._key(element)) is not OMIT:
            key = _text(raw, "key")
        if key is None and self._needs_key:
            raise MappingError(f"key: resolved to null ({self.action} needs the source record's id)")
        order: str | None = None
        if self._order is not None and (raw := self._order(element)) is not OMIT:
            order = epoch_ms_text(raw)
        order_scope: str | None = None
        if order is not None and self._order_scope is not None:
            scope = self._order_scope(element)
            order_scope = None if scope is OMIT else _text(scope, "order_scope")
        state: str | None = None
        if self._state is not None:
            value = self._state(element)
            if value is not OMIT:
                state = _text(value, "lead.state")
        data = {name: value for name, evaluate in self._data if (value := evaluate(element)) is not OMIT}
        custom = {
            name: value for name, evaluate in self._custom_fields if (value := evaluate(element)) is not OMIT
        }
        extras = {name: value for name, evaluate in self._extras if (value := evaluate(element)) is not OMIT}
        return LeadCommand.model_construct(
            mapping=self.name,
            index=index,
            element=element_id,
            action=self.action,
            table=self.table,
            link=self.link,
            key=key,
            order=order,
            order_scope=order_scope,
            state=state,
            data=data,
            custom_fields=custom,
            extras=extras,
        )


def _compile_fields(
    fields: Mapping[str, str | ValueObject], prefix: str, compiler: Compiler
) -> list[tuple[str, Evaluator]]:
    return [(name, compile_value(spec, f"{prefix}.{name}", compiler)) for name, spec in fields.items()]


def _kind(value: Any) -> str:
    """A JSON type name (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
