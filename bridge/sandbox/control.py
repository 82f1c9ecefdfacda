"""The sandbox's own control routes (no auth: a local test double, never exposed as the upstream).

    GET  /sandbox/events[?after=SEQ]   {"events": [...]}: automation events with seq > SEQ
    GET  /sandbox/entries              {"entries": [...]}: every entry, in creation order
    POST /sandbox/reset                clear entries, events and idempotency records; faults off
    GET  /sandbox/faults               the FaultConfig in force
    PUT  /sandbox/faults               replace it (omitted fields take their defaults); 400 if invalid

These routes get no latency and no faults.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.sandbox.faults import FaultConfig
from bridge.sandbox.responses import SandboxError, json_response
from bridge.sandbox.store import SandboxState


def _fault_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()
    )


def control_routes(state: SandboxState) -> list[Route]:
    async def list_events(request: Request) -> Response:
        after = request.query_params.get("after", "0")
        try:
            seq = int(after)
        except ValueError:
            raise SandboxError(400, "after must be an integer") from None
        return json_response({"events": state.events.after(seq)})

    async def list_entries(request: Request) -> Response:
        return json_response({"entries": list(state.entries.values())})

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"status": "reset"})

    async def get_faults(request: Request) -> Response:
        return json_response(state.faults.model_dump(mode="json"))

    async def put_faults(request: Request) -> Response:
        try:
            config = FaultConfig.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            raise SandboxError(400, _fault_problems(exc)) from None
        state.faults = config
        return json_response(config.model_dump(mode="json"))

    return [
        Route("/sandbox/events", list_events, methods=["GET"]),
        Route("/sandbox/entries", list_entries, methods=["GET"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
        Route("/sandbox/faults", get_faults, methods=["GET"]),
        Route("/sandbox/faults", put_faults, methods=["PUT"], name="put_faults"),
    ]
