"""The Connect sandbox: a local, faithful stand-in for the upstream Connect API (CONTRACT §8).

Used by `leadbridge run --sandbox`, by the tests as the upstream and by the benchmarks. Modules:

    app          create_sandbox_app, DEMO_API_KEY, DEMO_TABLE_ID
    routes       the /connect routes (auth, faults, idempotency around the handlers)
    control      the /sandbox routes (events, entries, reset, faults)
    graph        a stand-in for the Graph API lead fetch of the Meta Lead Ads mapping
    store        SandboxState: tables, entries, events, idempotency records, faults
    entries      the create and merge-patch rules for table entries
    tables       Lead Pool schema and the packaged seed (seed.json)
    events       the automation-event log
    idempotency  Idempotency-Key records and per-key locks
    faults       FaultConfig and the injector
    merge_patch  RFC 7396, pure
    responses    SandboxError and the JSON answers
"""

from bridge.sandbox.app import DEMO_API_KEY, DEMO_TABLE_ID, create_sandbox_app
from bridge.sandbox.faults import FaultConfig
from bridge.sandbox.merge_patch import merge_patch
from bridge.sandbox.store import SandboxState

__all__ = [
    "DEMO_API_KEY",
    "DEMO_TABLE_ID",
    "FaultConfig",
    "SandboxState",
    "create_sandbox_app",
    "merge_patch",
]
