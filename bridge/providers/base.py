"""The one small interface every inbound adapter implements.

A provider is built once per mapping from that mapping's `verify:` options (validated by its
`Options` model) and then, for every request:

    verified = provider.verify(request, now_s)   # raises Unauthorized / UnsupportedMediaType
    payload  = provider.parse(verified)          # raises InvalidBody
    event_id = provider.event_id(verified, payload)

`verify` first refuses a content type the provider never sends (`check_content_type`, 415),
then checks the raw bytes exactly as received (never re-serialised JSON) and returns a
`Verified`, the only thing `parse` accepts: an unverified request cannot reach the queue.
(Salesforce must read its body to compare the organization id, so its `verify` may also raise
InvalidBody.) Options holding a secret, token or password use the `Secrets` type: one value or
a list during rotation, never empty. Event ids go through `short_id` (long ones are hashed).
Providers with a handshake (Meta's GET `hub.challenge`) answer it in `handshake`, and providers
that demand a particular success reply (Salesforce's SOAP Ack, Webflow's exact 200) give it in
`accepted_response`.

Adding a provider is one module in this package and one line in `registry.py`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, TypeAlias, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from bridge.errors import UnsupportedMediaType


class ProviderOptions(BaseModel):
    """Base of every provider's `verify:` options: strict, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=ProviderOptions)


def _non_empty(value: SecretStr) -> SecretStr:
    # An empty secret would be an HMAC key everybody knows: refuse it at load time.
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _without_line_breaks(value: object) -> object:
    # A secret put in a Kubernetes Secret from a file (`--from-file`), or into a variable with
    # `echo`, usually ends in a newline, which no vendor's secret has and no header can carry:
    # kept, it would make every signature check fail and every webhook a 401.
    return value.strip("\r\n") if isinstance(value, str) else value


# One secret (token, password) or a non-empty list of them, for rotation; never empty strings.
Secret: TypeAlias = Annotated[SecretStr, BeforeValidator(_without_line_breaks), AfterValidator(_non_empty)]
Secrets: TypeAlias = Secret | Annotated[list[Secret], Field(min_length=1)]

# Event ids become part of a dedupe key: longer ids are replaced by their hash.
MAX_EVENT_ID_CHARS = 128


@dataclass(frozen=True)
class InboundRequest:
    """What a provider may look at. Header names are lower-case."""

    method: str
    # The full URL as the app saw it (scheme://host/path?query); filled for providers that set
    # `uses_url` (building it costs a few microseconds per webhook), '' for the others.
    url: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type alone, lower-case, without parameters ('' when absent)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Verified:
    """A request whose origin has been proven. Only `Provider.verify` should build one."""

    request: InboundRequest
    provider: str
    # Facts the provider learned while verifying (e.g. the signed message id) for event_id().
    facts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderResponse:
    """A reply a provider dictates instead of the default JSON (handshake, SOAP Ack, ...)."""

    status: int
    body: bytes
    media_type: str


class Provider(Generic[OptionsT]):
    """Base class. Subclasses set `name`, `Options`, `content_types` and implement `verify`."""

    name: ClassVar[str]
    Options: ClassVar[type[ProviderOptions]]
    # Media types this provider ever sends; anything else is a 415. Empty means any.
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})
    # Request headers that parse() needs again in the worker (kept with the delivery; never secrets).
    kept_headers: ClassVar[tuple[str, ...]] = ("content-type",)
    # Status of the default success answer (Webflow counts only an exact 200 as success).
    accepted_status: ClassVar[int] = 202
    # Non-empty for providers that must be started with an explicit acknowledgement (`none`).
    insecure: ClassVar[bool] = False
    # Whether verify() reads `InboundRequest.url` (a signature over the URL).
    uses_url: ClassVar[bool] = False

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def check_content_type(self, request: InboundRequest) -> None:
        if self.content_types and request.content_type not in self.content_types:
            raise UnsupportedMediaType()

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        raise NotImplementedError

    def parse(self, verified: Verified) -> Any:
        """The payload mapping expressions see. Default: JSON with a depth bound."""
        from bridge.providers.bodies import parse_json

        return parse_json(verified.request.body)

    def event_id(self, verified: Verified, payload: Any) -> str:
        """The provider's own event id, or a hash of the body where it has none."""
        return body_hash(verified.request.body)

    def handshake(self, request: InboundRequest) -> ProviderResponse | None:
        """Answer a non-POST handshake (e.g. Meta's GET); None means 405."""
        return None

    def accepted_response(self, delivery_id: str, duplicate: bool) -> ProviderResponse | None:
        """A provider-specific success reply; None means the contract's JSON 202/200."""
        return None

    def reparse(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """Parse a stored delivery again in the worker (no verification: it was verified at ingest)."""
        request = InboundRequest(method="POST", url="", path="", query={}, headers=headers, body=body)
        return self.parse(Verified(request=request, provider=self.name))


def body_hash(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def short_id(value: str) -> str:
    """An event id fit for a dedupe key: kept when short and printable ASCII, else hashed."""
    if 0 < len(value) <= MAX_EVENT_ID_CHARS and value.isascii() and value.isprintable():
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def id_text(value: Any) -> str | None:
    """A payload value usable as (part of) an id: a non-empty string or an integer, as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def secrets_of(value: SecretStr | list[SecretStr]) -> list[bytes]:
    """A secret option accepts one value or a list (rotation); give them all as bytes."""
    values = value if isinstance(value, list) else [value]
    return [v.get_secret_value().encode() for v in values]


def any_equal(candidates: list[bytes], expected: list[bytes]) -> bool:
    """Constant-time: is any candidate equal to any expected value? Checks every pair."""
    found = False
    for candidate in candidates:
        for want in expected:
            found |= hmac.compare_digest(candidate, want)
    return found
