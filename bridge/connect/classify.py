"""One pure decision: is an upstream outcome worth retrying, and not before when?

classify(status=None, transport_error=True)    -> retryable (connect error, timeout)
classify(429 / 503, retry_after="7")            -> retryable, not before 7 s
classify(5xx), classify(408), classify(425)     -> retryable
classify(409)                                   -> retryable (an idempotent request in flight)
classify(401)                                   -> retryable (our key is refused: every call is)
classify(401, third_party=True)                 -> permanent (an enrich source's token: dead-letter)
classify(other 4xx)                             -> permanent: dead-letter with the message
classify(2xx)                                   -> not an error
"""

from __future__ import annotations

import datetime
import email.utils
import time
from dataclasses import dataclass

# 401: the upstream refuses the API key itself (revoked, rotated, mistyped), so it would refuse
# every delivery alike, and nothing was applied. Retried, and counted by the circuit breaker as
# the upstream being down: deliveries wait, without spending attempts, until the key is put
# right, rather than every one of them going to the dead-letter queue to be replayed by hand.
RETRYABLE_4XX = frozenset({401, 408, 409, 425, 429})
# What a third party's 401 (an enrich fetch: its token, per mapping) is: permanent, as documented
# (docs/mappings.md, enrich). It says nothing of the Connect API and of our key there.
THIRD_PARTY_RETRYABLE_4XX = RETRYABLE_4XX - {401}
MAX_RETRY_AFTER_S = 3600.0  # a far-future Retry-After cannot park a lead for days


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retryable: bool
    retry_after_s: float | None = None


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isascii() and value.isdigit():  # str.isdigit() is also true of "²", which float() refuses
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" (RFC 5322: UTC, source unknown) parses naive: not local time
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def classify(
    status: int | None,
    *,
    transport_error: bool = False,
    retry_after: str | None = None,
    now_s: float | None = None,
    third_party: bool = False,
) -> Outcome:
    if transport_error or status is None:
        return Outcome(ok=False, retryable=True)
    if 200 <= status < 300:
        return Outcome(ok=True, retryable=False)
    if status in (THIRD_PARTY_RETRYABLE_4XX if third_party else RETRYABLE_4XX) or status >= 500:
        return Outcome(ok=False, retryable=True, retry_after_s=parse_retry_after(retry_after, now_s))
    return Outcome(ok=False, retryable=False)
