"""The mapping file format (version 1) as strict pydantic models; `schema.py` exports its JSON Schema.

These models check the shape of a file: unknown keys, types, JMESPath syntax, transform names,
template parts. Checks that need more than one field or the provider registry (a `key` for
patch/upsert, `verify:` options) are made by `compile.py`, which knows the field paths too.

A value (`ValueSpec`) is either a JMESPath string or a `ValueObject` with exactly one of `path`,
`value` or `template` (+ `with`), then `then`, `map`, `default`, `required`, `when`, `on_null`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from bridge.mapping.commands import Action
from bridge.mapping.expressions import check_expression
from bridge.mapping.transforms import (
    OPTION_MODELS,
    TRANSFORM_NAMES,
    DatetimeOptions,
    NumberOptions,
    PhoneOptions,
    stringify,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
LINK_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_TEMPLATE_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
URL_PART = re.compile(r"\{([^{}]*)\}")


def _strict(title: str | None = None) -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, title=title)


JMESPath = Annotated[
    str,
    AfterValidator(check_expression),
    WithJsonSchema({"type": "string", "description": "JMESPath expression"}),
]


# --- transforms ---------------------------------------------------------------------------------


def _known_transform(name: str) -> str:
    if name not in TRANSFORM_NAMES:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORM_NAMES)}")
    return name


TransformName = Annotated[
    str,
    AfterValidator(_known_transform),
    WithJsonSchema({"type": "string", "enum": list(TRANSFORM_NAMES)}),
]


class PhoneE164Call(BaseModel):
    model_config = _strict("phone_e164 with options")
    phone_e164: PhoneOptions


class DatetimeCall(BaseModel):
    model_config = _strict("datetime with options")
    datetime: DatetimeOptions


class NumberCall(BaseModel):
    model_config = _strict("number with options")
    number: NumberOptions


class IntegerCall(BaseModel):
    model_config = _strict("integer with options")
    integer: NumberOptions


# A transform with options, by its model: the transform's name, which is also the model's field.
_CALLS: dict[type[BaseModel], str] = {
    PhoneE164Call: "phone_e164",
    DatetimeCall: "datetime",
    NumberCall: "number",
    IntegerCall: "integer",
}


def _transform_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "<name>"
    if (called := _CALLS.get(type(value))) is not None:
        return f"<{called}>"
    if isinstance(value, dict) and len(value) == 1:
        (name,) = value
        if name in OPTION_MODELS:
            return f"<{name}>"
    return None


TransformSpec = Annotated[
    Annotated[TransformName, Tag("<name>")]
    | Annotated[PhoneE164Call, Tag("<phone_e164>")]
    | Annotated[DatetimeCall, Tag("<datetime>")]
    | Annotated[NumberCall, Tag("<number>")]
    | Annotated[IntegerCall, Tag("<integer>")],
    Discriminator(
        _transform_tag,
        custom_error_type="transform",
        custom_error_message=(
            "a transform is a name (" + ", ".join(TRANSFORM_NAMES) + ") or a one-key object "
            "{phone_e164: {region: DE}}, {datetime: {format: ..., tz: ...}}, {number: {decimal: ','}} "
            "or {integer: {decimal: ','}}"
        ),
    ),
]


def transform_parts(spec: Any) -> tuple[str, BaseModel | None]:
    """(name, options or None) of a validated transform spec."""
    if (called := _CALLS.get(type(spec))) is not None:
        options: BaseModel = getattr(spec, called)
        return called, options
    return str(spec), None


# --- values -------------------------------------------------------------------------------------


def template_parts(template: str) -> list[tuple[bool, str]]:
    """'Hi {first}!' -> [(False, 'Hi '), (True, 'first'), (False, '!')]; `{{`/`}}` are braces."""
    parts: list[tuple[bool, str]] = []
    literal = ""
    position = 0
    for match in _TEMPLATE_PART.finditer(template):
        literal += template[position : match.start()]
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
        elif token in ("{", "}"):
            raise ValueError(
                f"unmatched {token!r} at position {match.start()} (write {token * 2} for a brace)"
            )
        else:
            name = (match.group(1) or "").strip()
            if not name:
                raise ValueError(f"empty {{}} at position {match.start()}")
            if literal:
                parts.append((False, literal))
                literal = ""
            parts.append((True, name))
    literal += template[position:]
    if literal:
        parts.append((False, literal))
    return parts


def _map_keys(value: Any) -> Any:
    """Map keys as text, the way lookups compare them: 1 -> '1', true -> 'true'."""
    if isinstance(value, dict):
        return {stringify(key) if key is not None else "null": item for key, item in value.items()}
    return value


class ValueObject(BaseModel):
    """A value with a source (exactly one of path, value, template) and what to do with it."""

    model_config = _strict("value object")

    path: JMESPath | None = Field(default=None, description="JMESPath over the payload (or `each` element)")
    value: Any = Field(default=None, description="a literal value")
    template: str | None = Field(default=None, description="text with {part} placeholders filled from `with`")
    with_: dict[str, ValueSpec] = Field(
        default_factory=dict, alias="with", description="the template's parts, each a value"
    )
    then: list[TransformSpec] = Field(default_factory=list, description="transforms applied in order")
    map: Annotated[dict[str, Any] | None, BeforeValidator(_map_keys)] = Field(
        default=None, description="lookup table applied after `then`; a miss gives null (then `default`)"
    )
    default: Any = Field(default=None, description="used when the result is null")
    required: bool = Field(default=False, description="a null result dead-letters the delivery")
    when: JMESPath | None = Field(default=None, description="condition; falsy leaves the field out entirely")
    on_null: Literal["omit", "delete"] = Field(
        default="omit",
        description="omit: leave a null field out; delete: send null (removes the key on a patch)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ValueObject:
        given = [name for name in ("path", "value", "template") if name in self.model_fields_set]
        if len(given) != 1:
            detail = f" (got {' and '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of path, value or template{detail}")
        if self.template is None:
            if self.with_:
                raise ValueError("`with` only goes with `template`")
            return self
        unknown = sorted(
            {name for is_part, name in template_parts(self.template) if is_part} - set(self.with_)
        )
        if unknown:
            raise ValueError(f"template part(s) {', '.join(unknown)} not defined in `with`")
        return self

    @field_validator("template")
    @classmethod
    def _valid_template(cls, template: str | None) -> str | None:
        if template is not None:
            template_parts(template)
        return template


def _value_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "<expression>"
    if isinstance(value, dict | ValueObject):
        return "<object>"
    return None


ValueSpec = Annotated[
    Annotated[JMESPath, Tag("<expression>")] | Annotated[ValueObject, Tag("<object>")],
    Discriminator(
        _value_tag,
        custom_error_type="value",
        custom_error_message="a value is a JMESPath string or an object with one of path, value or template",
    ),
]
ValueObject.model_rebuild()


# --- the file -----------------------------------------------------------------------------------


def url_expressions(url: str) -> list[str]:
    return [match.group(1).strip() for match in URL_PART.finditer(url)]


class EnrichSpec(BaseModel):
    """Fetch the full record for thin webhooks; the JSON is visible under `as`."""

    model_config = _strict("enrich")

    url: str = Field(description="https URL; each {expr} is a JMESPath over the payload, URL-encoded")
    headers: dict[str, str] = Field(default_factory=dict, description="request headers (${VAR} allowed)")
    as_: str = Field(
        alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="key the record appears under"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="timeout of one fetch attempt")

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError("url must start with https:// or http://")
        if "{" in URL_PART.sub("", url) or "}" in URL_PART.sub("", url):
            raise ValueError("unmatched brace in url")
        for expression in url_expressions(url):
            if not expression:
                raise ValueError("empty {} in url")
            check_expression(expression)
        return url


class RateLimitSpec(BaseModel):
    """At most `per_s` accepted deliveries per second for this mapping, across all replicas."""

    model_config = _strict("rate_limit")

    per_s: int = Field(gt=0, description="accepted deliveries per second; more get 429 with Retry-After")


class LeadSpec(BaseModel):
    """What the lead gets: its state, `data`, custom fields and the optional top-level fields."""

    model_config = _strict("lead")

    state: ValueSpec | None = Field(default=None, description="lead state name (case-insensitive) or id")
    data: dict[str, ValueSpec] = Field(default_factory=dict, description="free-form lead data")
    custom_fields: dict[str, ValueSpec] = Field(default_factory=dict, description="custom field name or id")
    follow_up_date: ValueSpec | None = None
    first_opened_at: ValueSpec | None = None
    appointment_type: ValueSpec | None = Field(default=None, description="interestedInAppointmentTypeId")


class MappingFile(BaseModel):
    """One mapping file: a route, its provider, and how its payloads become lead commands."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="leadbridge mapping file (version 1)")

    version: Literal[1] = Field(description="file format version")
    name: str = Field(pattern=NAME_PATTERN, max_length=100, description="route: POST /hooks/{name}")
    description: str | None = Field(default=None, description="free text for people")
    provider: str = Field(description="inbound adapter: verification, body parsing, event id")
    verify: dict[str, Any] = Field(default_factory=dict, description="the provider's options")
    table: str = Field(min_length=1, description="Lead Pool id")
    action: Action = Field(description="create | patch | upsert (patch the linked entry, else create)")
    when: JMESPath | None = Field(default=None, description="falsy: the delivery is ignored")
    each: JMESPath | None = Field(default=None, description="a list: one lead command per element")
    key: ValueSpec | None = Field(
        default=None, description="the source record's id (needed for patch and upsert)"
    )
    link: str | None = Field(default=None, pattern=LINK_PATTERN, description="link namespace; default: name")
    order: ValueSpec | None = Field(
        default=None, description="timestamp: an older event for a key never overwrites a newer one"
    )
    order_scope: ValueSpec | None = Field(
        default=None,
        description="what `order` is compared within, per key (e.g. the property an event changes): "
        "an older event of one scope is applied after a newer one of another",
    )
    enrich: EnrichSpec | None = None
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="optional bound on accepted deliveries"
    )
    lead: LeadSpec = Field(default_factory=LeadSpec)


def known_keys() -> set[str]:
    """Every key the format knows (for 'did you mean' hints)."""
    keys: set[str] = set()
    for model in (
        MappingFile,
        LeadSpec,
        EnrichSpec,
        RateLimitSpec,
        ValueObject,
        PhoneOptions,
        DatetimeOptions,
        NumberOptions,
    ):
        for name, info in model.model_fields.items():
            keys.add(info.alias or name)
    return keys
