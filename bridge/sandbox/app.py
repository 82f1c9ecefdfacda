"""`create_sandbox_app`: a local Connect API (CONTRACT §8) as a Starlette app, one state per app.

    app = create_sandbox_app()             # seeded demo Lead Pool, key DEMO_API_KEY, no faults
    app.state.sandbox                      # its SandboxState: entries, events, idempotency, faults

The seed is read here, at creation, from the packaged `seed.json`. There is no lifespan: the app
owns nothing but memory.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from bridge.sandbox.control import control_routes
from bridge.sandbox.faults import FaultConfig
from bridge.sandbox.graph import graph_routes
from bridge.sandbox.responses import SandboxError, http_error_handler, sandbox_error_handler
from bridge.sandbox.routes import connect_routes
from bridge.sandbox.store import SandboxState
from bridge.sandbox.tables import load_seed_tables

DEMO_API_KEY = "sandbox-key"
DEMO_TABLE_ID = "2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f"


def create_sandbox_app(
    api_key: str = DEMO_API_KEY, *, faults: FaultConfig | None = None, seed: bool = True
) -> Starlette:
    """A fresh sandbox. `seed=False` starts without tables (add them with `state.add_table`)."""
    state = SandboxState(api_key, tables=load_seed_tables() if seed else (), faults=faults)
    app = Starlette(
        routes=[*connect_routes(state), *control_routes(state), *graph_routes()],
        exception_handlers={SandboxError: sandbox_error_handler, HTTPException: http_error_handler},
    )
    app.state.sandbox = state
    return app
