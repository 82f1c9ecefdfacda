"""What the generic providers (`hmac`, `basic-auth`, `token`, `none`) share: any body shape.

They serve tools with no adapter of their own (Google Forms through Apps Script, Gravity
Forms, Unbounce, in-house systems), which send JSON, urlencoded or multipart bodies. The body
is parsed by its Content-Type; `json_fields` names form fields holding a JSON string (such as
Unbounce's `data.json`) to decode into objects. Their event id is a hash of the body, unless
`event_id_field` names the payload's field (a dotted path) that identifies the submission: two
real submissions with byte-identical bodies (a form with no unique field, sent twice in a week)
would otherwise be one event, the second answered "duplicate".
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field

from bridge.providers.base import Provider, ProviderOptions, Verified, body_hash, id_text, short_id
from bridge.providers.bodies import FORM_URLENCODED, JSON, MULTIPART, decode_json_fields, parse_body

GENERIC_CONTENT_TYPES = frozenset({JSON, FORM_URLENCODED, MULTIPART})


class GenericBodyOptions(ProviderOptions):
    json_fields: list[str] = Field(default_factory=list, max_length=32)
    # The payload's field (dotted path, after `json_fields`) that names the submission: its event
    # id. A body without it falls back to the body's hash.
    event_id_field: str | None = Field(default=None, min_length=1, max_length=200)


GenericOptionsT = TypeVar("GenericOptionsT", bound=GenericBodyOptions)


class GenericProvider(Provider[GenericOptionsT]):
    """A generic provider's body and event id; subclasses verify."""

    content_types = GENERIC_CONTENT_TYPES

    def parse(self, verified: Verified) -> Any:
        return parse_generic(verified, self.options.json_fields)

    def event_id(self, verified: Verified, payload: Any) -> str:
        field = self.options.event_id_field
        if not field:
            return body_hash(verified.request.body)
        value: Any = payload
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        named = id_text(value)
        return short_id(named) if named else body_hash(verified.request.body)


def parse_generic(verified: Verified, json_fields: list[str]) -> Any:
    payload = parse_body(verified.request.body, verified.request.headers.get("content-type", ""))
    if json_fields and isinstance(payload, dict):
        payload = decode_json_fields(payload, json_fields)
    return payload
