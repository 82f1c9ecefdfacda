"""The one error tree of leadbridge.

    BridgeError
    ├── ConfigError                  settings or mapping files are wrong (start-up stops)
    │   └── MappingValidationError   one or more `file:line: field.path: message` problems
    ├── InboundError                 a webhook request is refused; `status` is fixed, no detail leaks
    │   ├── InvalidBody              400  body does not parse for this provider
    │   ├── Unauthorized             401  signature, token or timestamp wrong or missing
    │   ├── UnknownMapping           404  no mapping of that name
    │   ├── MethodNotAllowed         405
    │   ├── RequestTimeout           408  body did not arrive in time
    │   ├── BodyTooLarge             413
    │   ├── UnsupportedMediaType     415  a content type the provider never sends
    │   ├── RateLimited              429  per-mapping accept limit reached
    │   └── QueueUnavailable         503  nothing stored; the provider retries
    └── DeliveryError                turning a delivery into lead calls failed
        ├── MappingError             the mapping cannot produce commands (permanent)
        ├── UpstreamError            the Connect API (or an enrich source) answered badly or not at all
        ├── WaitForLink              a patch found no linked entry yet (retryable)
        ├── MappingNotLoaded         the delivery's mapping is not loaded here (yet) (retryable)
        └── Deferred                 try again later without counting an attempt
            ├── CircuitOpen          the upstream looks down (shared circuit breaker)
            └── OrderWait            an earlier delivery for the same record goes first

Inbound errors become responses in one place (`bridge.http.responses`). Delivery errors carry
`retryable`, `retry_after_s` and the upstream `status`; `bridge.connect.classify` decides them.
Messages never carry secrets or lead values.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error leadbridge raises on purpose."""


class ConfigError(BridgeError):
    """Settings or mapping files are wrong; start-up (or a reload) stops with this message."""


class MappingValidationError(ConfigError):
    """Mapping files failed validation. `problems` are `file:line: field.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class InboundError(BridgeError):
    status: int = 400
    reason: str = "bad request"
    outcome: str = "invalid"  # the leadbridge_webhooks_total outcome label

    def __init__(self, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class InvalidBody(InboundError):
    status = 400
    reason = "body does not parse for this provider"
    outcome = "invalid"


class Unauthorized(InboundError):
    status = 401
    reason = "unauthorized"
    outcome = "unauthorized"

    def __init__(self, reason: str | None = None) -> None:
        # The public reason is always the same; the internal one is kept for debug logs only.
        self.internal_reason = reason or "unauthorized"
        super().__init__("unauthorized")


class UnknownMapping(InboundError):
    status = 404
    reason = "not found"
    outcome = "not_found"


class MethodNotAllowed(InboundError):
    status = 405
    reason = "method not allowed"
    outcome = "invalid"


class RequestTimeout(InboundError):
    status = 408
    reason = "request body did not arrive in time"
    outcome = "invalid"


class BodyTooLarge(InboundError):
    status = 413
    reason = "request body too large"
    outcome = "too_large"


class UnsupportedMediaType(InboundError):
    status = 415
    reason = "unsupported content type for this provider"
    outcome = "unsupported"


class RateLimited(InboundError):
    status = 429
    reason = "too many deliveries for this mapping"
    outcome = "rate_limited"

    def __init__(self, retry_after_s: int = 1) -> None:
        self.retry_after_s = retry_after_s
        super().__init__()


class QueueUnavailable(InboundError):
    status = 503
    reason = "queue unavailable; retry later"
    outcome = "unavailable"

    def __init__(self, retry_after_s: int = 5) -> None:
        self.retry_after_s = retry_after_s
        super().__init__()


class DeliveryError(BridgeError):
    """A delivery could not be turned into lead calls (yet)."""

    retryable: bool = False
    # About the delivery as a whole, not one `each` element of it: never set aside on its own
    # (the worker's `Failures`, `CompiledMapping.plan(isolate=True)`), it stops the delivery.
    whole: bool = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        status: int | None = None,
        whole: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        if whole is not None:
            self.whole = whole
        self.retry_after_s = retry_after_s
        self.status = status


class MappingError(DeliveryError):
    """The mapping cannot produce commands for this payload (a required field is null, ...)."""

    retryable = False


class UpstreamError(DeliveryError):
    """The upstream (or an enrich source) failed; `retryable` says whether trying again can help."""


class WaitForLink(DeliveryError):
    """A patch found no linked entry: the create may still be in flight, so try again later."""

    retryable = True


class MappingNotLoaded(DeliveryError):
    """The delivery's mapping is not loaded in this worker: it may be on its way (on Kubernetes a
    ConfigMap reaches each pod on its own delay, so a web pod can accept for a mapping a worker
    does not have yet; an editor saving by rename leaves the folder without it for a moment), so
    try again, for as long as a patch waits for its create (BRIDGE_LINK_WAIT_S)."""

    retryable = True


class Deferred(DeliveryError):
    """Try this delivery again in `defer_s` seconds without counting an attempt."""

    retryable = True

    def __init__(self, message: str, *, defer_s: float) -> None:
        super().__init__(message, retryable=True, retry_after_s=defer_s)
        self.defer_s = max(0.0, defer_s)


class CircuitOpen(Deferred):
    """The upstream looks down: this delivery waits (no attempt counted)."""


class OrderWait(Deferred):
    """An earlier delivery for the same record goes first: this one waits (no attempt counted)."""


def failure_kind(exc: DeliveryError) -> str:
    """What kind of failure dead-lettered a delivery, for its log line (never its message)."""
    if isinstance(exc, UpstreamError):
        return "upstream"
    if isinstance(exc, WaitForLink):
        return "no entry linked"
    if isinstance(exc, MappingNotLoaded):
        return "mapping not loaded"
    if isinstance(exc, MappingError):
        return "mapping"
    return "delivery"


def dead_reason(exc: DeliveryError) -> str:
    """A failure as a dead letter's reason says it."""
    return f"mapping error: {exc.message}" if isinstance(exc, MappingError) else exc.message
