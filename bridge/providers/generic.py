"""What the generic providers (`hmac`, `basic-auth`, `token`, `none`) share: any body shape.

They serve tools with no adapter of their own (Google Forms through Apps Script, Gravity
Forms, Unbounce, in-house systems), which send JSON, urlencoded or multipart bodies. The body
is parsed by its Content-Type; `json_fields` names form fields holding a JSON string (such as
Unbounce's `data.json`) to decode into objects. Their event id is a hash of the body.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bridge.providers.base import ProviderOptions, Verified
from bridge.providers.bodies import FORM_URLENCODED, JSON, MULTIPART, decode_json_fields, parse_body

GENERIC_CONTENT_TYPES = frozenset({JSON, FORM_URLENCODED, MULTIPART})


class GenericBodyOptions(ProviderOptions):
    json_fields: list[str] = Field(default_factory=list, max_length=32)


def parse_generic(verified: Verified, json_fields: list[str]) -> Any:
    payload = parse_body(verified.request.body, verified.request.headers.get("content-type", ""))
    if json_fields and isinstance(payload, dict):
        payload = decode_json_fields(payload, json_fields)
    return payload
