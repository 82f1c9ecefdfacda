"""A stand-in for the one Graph API call the shipped Meta Lead Ads mapping makes (its `enrich`).

    GET /graph/{version}/{lead_id}[?fields=...]   the lead's form answers (Bearer token required)

A Meta Lead Ads notification carries only a lead id; the mapping fetches the answers from the
Graph API. With `leadbridge run --sandbox`, `META_GRAPH_URL` points here (mappings/sandbox.env),
so the Meta sample becomes a lead without the real Graph API, a Page or a token. The answer is
made up from the id (the same id always gives the same lead) with reserved values only: names of
no one, `example.com` addresses, and UK numbers of the range Ofcom keeps for drama (020 7946 0xxx).

Like Graph, a request without an access token is answered 400 with an `OAuthException`; an id
that is not a number is answered 400 with a `GraphMethodException`. These routes get no latency
and no faults (the sandbox's faults are the Connect API's).
"""

from __future__ import annotations

import zlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.sandbox.responses import json_response

FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LAST_NAMES = ("Sample", "Example", "Placeholder", "Demo", "Testlead", "Sandbox")
CREATED_TIME = "2024-05-14T12:33:10+0000"


def made_up_lead(lead_id: str) -> dict[str, Any]:
    """The lead Graph would return for `lead_id` with fields=created_time,field_data (made up)."""
    draw = zlib.crc32(lead_id.encode())
    first = FIRST_NAMES[draw % len(FIRST_NAMES)]
    last = LAST_NAMES[(draw >> 8) % len(LAST_NAMES)]
    return {
        "id": lead_id,
        "created_time": CREATED_TIME,
        "field_data": [
            {"name": "email", "values": [f"{first}.{last}.{lead_id}@example.com"]},
            {"name": "full_name", "values": [f"{first} {last}"]},
            {"name": "phone_number", "values": [f"+4420794600{draw % 100:02d}"]},
            {"name": "company_name", "values": [f"{last} Ltd"]},
        ],
    }


def _graph_error(message: str, kind: str, code: int) -> Response:
    return json_response({"error": {"message": message, "type": kind, "code": code}}, 400)


async def _lead(request: Request) -> Response:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _graph_error("An access token is required to request this resource.", "OAuthException", 104)
    lead_id = request.path_params["lead_id"]
    if not lead_id.isdigit():
        return _graph_error(
            f"Unsupported get request. Object with ID '{lead_id}' does not exist.",
            "GraphMethodException",
            100,
        )
    return json_response(made_up_lead(lead_id))


def graph_routes() -> list[Route]:
    return [Route("/graph/{version}/{lead_id}", _lead, methods=["GET"])]
