"""Every Redis key leadbridge writes, in one place. Lead values never appear in a key: record
keys (emails, CRM ids) are hashed first."""

from __future__ import annotations

import hashlib

PREFIX = "lb:"
DELIVERY = PREFIX + "d:"  # hash: one delivery (payload, state, attempts)
SEEN = PREFIX + "seen:"  # string: dedupe record, mapping + event id -> delivery id
SEQ = PREFIX + "seq"  # counter: arrival order of deliveries
DONE = PREFIX + "done:"  # hash per delivery: command slot (worker.slot) -> result, for exactly-once effects
LINK = PREFIX + "link:"  # string: link namespace + hashed key -> Connect entry id
LOCK = PREFIX + "lock:"  # string with a lease: one command at a time per link + key
ORDER = PREFIX + "order:"  # string: last applied `order` value per link + key
SCOPED_ORDER = PREFIX + "order-s:"  # the same per link + key + the mapping's `order_scope`
DLQ = PREFIX + "dlq"  # sorted set: dead-lettered delivery ids by time
CIRCUIT = PREFIX + "circuit"  # hash: shared upstream circuit breaker state
RATE = PREFIX + "rate:"  # string counters: per-mapping accept rate limits
HEARTBEATS = PREFIX + "workers"  # sorted set: worker process id -> unix time of its last heartbeat
UNPLANNED = PREFIX + "unplanned:"  # sorted set per mapping: accepted, not yet planned (seq -> id)
PENDING = PREFIX + "pending:"  # sorted set per link + hashed key: deliveries owing it a command
WAKE = PREFIX + "wake"  # pub/sub channel (not a key): new deliveries were queued
SENT = PREFIX + "sent:"  # string per idempotency key: the body first sent under it (queue/sent.py)
CREATING = PREFIX + "creating:"  # string per link + hashed key: the SENT key of a create not yet linked


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def delivery(delivery_id: str) -> str:
    return DELIVERY + delivery_id


def seen(mapping: str, event_id: str) -> str:
    return f"{SEEN}{mapping}:{digest(event_id)}"


def done(delivery_id: str) -> str:
    return DONE + delivery_id


def record(prefix: str, link: str, key: str) -> str:
    """A per-record key (LINK, LOCK, ORDER) that never contains the record's own id in clear."""
    return f"{prefix}{link}:{digest(key)}"


def sent(idempotency_key: str) -> str:
    return SENT + idempotency_key
