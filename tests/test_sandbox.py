"""The Connect sandbox's rules, in-process over httpx.ASGITransport: tables, create, merge patch,
auth, Idempotency-Key replay, the automation-event log and the /sandbox control routes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID, FaultConfig, SandboxState, create_sandbox_app
from bridge.sandbox.tables import TableSpec

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def app() -> Starlette:
    return create_sandbox_app()


@pytest.fixture
def state(app: Starlette) -> SandboxState:
    sandbox: SandboxState = app.state.sandbox
    return sandbox


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sandbox",
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    ) as client:
        yield client


@pytest.fixture
def ids(state: SandboxState) -> dict[str, str]:
    """Lead state and custom field ids of the demo table, by name."""
    spec = state.tables[DEMO_TABLE_ID].spec
    return {s.name: s.id for s in spec.leadStates} | {f.name: f.id for f in spec.customFields}


def lead(ids: dict[str, str], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tableId": DEMO_TABLE_ID,
        "data": {"email": "ada@example.com", "name": {"first": "Ada", "last": "Lovelace"}},
        "customFieldData": {ids["Budget"]: 5000},
        "leadStateId": ids["New"],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


async def create(client: httpx.AsyncClient, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await client.post("/connect/table_entries", json=body, headers=headers)


# -- tables --------------------------------------------------------------------------------------


async def test_demo_table_is_seeded(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/connect/tables/{DEMO_TABLE_ID}")
    assert response.status_code == 200
    table = response.json()
    assert table["id"] == DEMO_TABLE_ID
    assert table["name"] == "Website leads"
    states = [(s["name"], s["default"]) for s in table["leadStates"]]
    assert states == [
        ("New", True),
        ("Contacted", False),
        ("Qualified", False),
        ("Won", False),
        ("Lost", False),
    ]
    fields = {f["name"]: f["type"] for f in table["customFields"]}
    assert fields == {"Budget": "number", "Company": "text", "Source": "text", "Consent": "boolean"}
    for item in table["leadStates"] + table["customFields"]:
        uuid.UUID(item["id"])


async def test_table_list_and_unknown_table(client: httpx.AsyncClient) -> None:
    listing = await client.get("/connect/tables")
    assert listing.status_code == 200
    assert [t["id"] for t in listing.json()] == [DEMO_TABLE_ID]
    missing = await client.get(f"/connect/tables/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert "error" in missing.json()


async def test_unseeded_sandbox_has_no_tables_until_one_is_added() -> None:
    app = create_sandbox_app("other-key", seed=False)
    sandbox: SandboxState = app.state.sandbox
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sandbox",
        headers={"Authorization": "Bearer other-key"},
    ) as client:
        assert (await client.get("/connect/tables")).json() == []
        spec = TableSpec.model_validate(
            {"id": "t1", "name": "Pool", "leadStates": [{"id": "s1", "name": "Open", "default": True}]}
        )
        sandbox.add_table(spec)
        created = await create(client, {"tableId": "t1", "data": {}, "leadStateId": "s1"})
        assert created.status_code == 201
        assert [t["id"] for t in (await client.get("/connect/tables")).json()] == ["t1"]


# -- create --------------------------------------------------------------------------------------


async def test_create_with_the_default_state(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    response = await create(client, lead(ids))
    assert response.status_code == 201
    entry = response.json()
    uuid.UUID(entry["id"])
    assert entry["tableId"] == DEMO_TABLE_ID
    assert entry["leadStateId"] == ids["New"]
    assert entry["data"] == {"email": "ada@example.com", "name": {"first": "Ada", "last": "Lovelace"}}
    assert entry["customFieldData"] == {ids["Budget"]: 5000}
    assert entry["firstOpenedAt"] is None
    assert entry["followUpDate"] is None
    assert entry["interestedInAppointmentTypeId"] is None
    assert entry["createdAt"] == entry["updatedAt"]
    assert entry["createdAt"].endswith("Z")
    assert list(state.entries) == [entry["id"]]
    assert (await client.get(f"/connect/table_entries/{entry['id']}")).json() == entry

    events = (await client.get("/sandbox/events")).json()["events"]
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "table.entry.added"),
        (2, "table.entry.leadState.changed"),
    ]
    assert all(e["entryId"] == entry["id"] and e["tableId"] == DEMO_TABLE_ID for e in events)
    assert events[1]["leadStateId"] == ids["New"]
    assert events[1]["previousLeadStateId"] is None


async def test_create_keeps_an_appointment_type_and_defaults_missing_custom_fields(
    client: httpx.AsyncClient, ids: dict[str, str]
) -> None:
    body = lead(ids, customFieldData=..., interestedInAppointmentTypeId="appt-1")
    entry = (await create(client, body)).json()
    assert entry["customFieldData"] == {}
    assert entry["interestedInAppointmentTypeId"] == "appt-1"


BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("missing state", {"leadStateId": ...}, "leadStateId"),
    ("null state", {"leadStateId": None}, "leadStateId"),
    ("unknown state", {"leadStateId": "00000000-0000-4000-8000-000000000000"}, "leadStateId"),
    ("state of type int", {"leadStateId": 3}, "leadStateId"),
    ("unknown custom field id", {"customFieldData": {"Budget": 5}}, "custom field"),
    ("firstOpenedAt", {"firstOpenedAt": "2024-05-01T10:00:00Z"}, "firstOpenedAt"),
    ("followUpDate", {"followUpDate": "2024-05-01"}, "followUpDate"),
    ("unknown top-level key", {"email": "x"}, "unknown field"),
    ("unknown table", {"tableId": "00000000-0000-4000-8000-000000000000"}, "tableId"),
    ("missing table", {"tableId": ...}, "tableId"),
    ("data not an object", {"data": ["a"]}, "data"),
    ("custom fields not an object", {"customFieldData": [1]}, "customFieldData"),
    ("appointment type not a string", {"interestedInAppointmentTypeId": 7}, "interestedInAppointmentTypeId"),
]


@pytest.mark.parametrize(("overrides", "word"), [c[1:] for c in BAD_CREATES], ids=[c[0] for c in BAD_CREATES])
async def test_create_refuses_with_400(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str], overrides: dict[str, Any], word: str
) -> None:
    response = await create(client, lead(ids, **overrides))
    assert response.status_code == 400
    assert word in response.json()["error"]
    assert not state.entries
    assert not len(state.events)


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1, 2]", b'"text"', b""], ids=["invalid", "array", "string", "empty"]
)
async def test_create_refuses_a_body_that_is_not_a_json_object(
    client: httpx.AsyncClient, state: SandboxState, raw: bytes
) -> None:
    response = await client.post(
        "/connect/table_entries", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]
    assert not state.entries


async def test_error_messages_carry_no_lead_values(client: httpx.AsyncClient, ids: dict[str, str]) -> None:
    response = await create(client, lead(ids, leadStateId="nope", data={"email": "secret@example.com"}))
    assert response.status_code == 400
    assert "secret@example.com" not in response.text


# -- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {DEMO_API_KEY}", "Bearer", f"Bearer {DEMO_API_KEY}x"],
    ids=["missing", "wrong key", "wrong scheme", "empty token", "longer key"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/connect/tables"),
        ("GET", f"/connect/tables/{DEMO_TABLE_ID}"),
        ("POST", "/connect/table_entries"),
        ("PATCH", "/connect/table_entries/some-id"),
        ("GET", "/connect/table_entries/some-id"),
    ],
)
async def test_connect_routes_need_the_bearer_key(
    app: Starlette,
    state: SandboxState,
    ids: dict[str, str],
    authorization: str | None,
    method: str,
    path: str,
) -> None:
    headers = {"Content-Type": "application/merge-patch+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as anon:
        response = await anon.request(method, path, json=lead(ids), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert DEMO_API_KEY not in response.text
    assert not state.entries


async def test_sandbox_control_routes_need_no_auth(app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as anon:
        assert (await anon.get("/sandbox/events")).status_code == 200
        assert (await anon.get("/sandbox/entries")).status_code == 200
        assert (await anon.get("/sandbox/faults")).status_code == 200


async def test_custom_api_key() -> None:
    app = create_sandbox_app("k-123")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as c:
        assert (await c.get("/connect/tables", headers={"Authorization": "Bearer k-123"})).status_code == 200
        assert (
            await c.get("/connect/tables", headers={"Authorization": "Bearer sandbox-key"})
        ).status_code == 401


def test_an_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        create_sandbox_app("")


# -- idempotency ---------------------------------------------------------------------------------


async def test_same_key_and_body_replays_without_a_second_entry_or_event(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    body = lead(ids)
    first = await create(client, body, key="delivery-1:0")
    # The same JSON with its keys in another order is the same request.
    reordered = dict(reversed(list(body.items())))
    second = await client.post(
        "/connect/table_entries", json=reordered, headers={"Idempotency-Key": "delivery-1:0"}
    )
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(state.entries) == 1
    assert len(state.events) == 2


async def test_past_its_bound_the_oldest_key_is_forgotten(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    state.idempotency.max_records = 3
    for n in range(4):
        assert (
            await create(client, lead(ids, data={"email": f"n{n}@example.com"}), key=f"k{n}")
        ).status_code == 201
    assert list(state.idempotency.records) == ["k1", "k2", "k3"]
    replayed = await create(client, lead(ids, data={"email": "n3@example.com"}), key="k3")
    assert replayed.headers["Idempotent-Replayed"] == "true"
    again = await create(client, lead(ids, data={"email": "n0@example.com"}), key="k0")  # forgotten: runs
    assert "Idempotent-Replayed" not in again.headers
    assert len(state.entries) == 5


async def test_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    first = await create(client, lead(ids), key="k")
    other = await create(client, lead(ids, data={"email": "grace@example.com"}), key="k")
    assert first.status_code == 201
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["error"]
    # The same key on another route is another request, too.
    patched = await client.patch(
        f"/connect/table_entries/{first.json()['id']}",
        json={},
        headers={**MERGE_PATCH, "Idempotency-Key": "k"},
    )
    assert patched.status_code == 422
    assert len(state.entries) == 1
    assert len(state.events) == 2


async def test_a_refused_request_does_not_lock_its_key(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    refused = await create(client, lead(ids, leadStateId=...), key="k")
    assert refused.status_code == 400
    assert "k" not in state.idempotency.records
    fixed = await create(client, lead(ids), key="k")
    assert fixed.status_code == 201
    again = await create(client, lead(ids), key="k")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == fixed.json()["id"]
    assert len(state.entries) == 1


async def test_concurrent_requests_with_one_key_execute_once(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    responses = await asyncio.gather(*(create(client, lead(ids), key="same") for _ in range(10)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert len(state.entries) == 1
    assert len(state.events) == 2
    assert not state.idempotency._locks  # per-key locks do not outlive their requests


async def test_requests_without_a_key_each_create(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    await create(client, lead(ids))
    await create(client, lead(ids))
    assert len(state.entries) == 2
    assert not state.idempotency.records


# -- patch ---------------------------------------------------------------------------------------


async def patch(
    client: httpx.AsyncClient, entry_id: str, body: Any, key: str | None = None
) -> httpx.Response:
    headers = {**MERGE_PATCH, **({"Idempotency-Key": key} if key else {})}
    content = json.dumps(body).encode()  # json=None would send no body at all
    return await client.patch(f"/connect/table_entries/{entry_id}", content=content, headers=headers)


async def test_patch_merges_data_and_deletes_on_null(client: httpx.AsyncClient, ids: dict[str, str]) -> None:
    entry = (await create(client, lead(ids, interestedInAppointmentTypeId="appt-1"))).json()
    response = await patch(
        client,
        entry["id"],
        {
            "data": {"email": None, "phone": "+4930123456", "name": {"first": "Augusta"}},
            "customFieldData": {ids["Budget"]: None, ids["Company"]: "Analytical Engines"},
            "followUpDate": "2024-06-01T09:00:00Z",
            "firstOpenedAt": "2024-05-02T08:30:00+02:00",
            "interestedInAppointmentTypeId": None,
        },
    )
    assert response.status_code == 200
    patched = response.json()
    assert patched["data"] == {"phone": "+4930123456", "name": {"first": "Augusta", "last": "Lovelace"}}
    assert patched["customFieldData"] == {ids["Company"]: "Analytical Engines"}
    assert patched["followUpDate"] == "2024-06-01T09:00:00Z"
    assert patched["firstOpenedAt"] == "2024-05-02T08:30:00+02:00"
    assert patched["interestedInAppointmentTypeId"] is None
    assert patched["leadStateId"] == ids["New"]
    assert (patched["id"], patched["tableId"], patched["createdAt"]) == (
        entry["id"],
        entry["tableId"],
        entry["createdAt"],
    )
    assert (await client.get(f"/connect/table_entries/{entry['id']}")).json() == patched

    cleared = (await patch(client, entry["id"], {"data": None, "followUpDate": None})).json()
    assert cleared["data"] == {}
    assert cleared["followUpDate"] is None
    assert cleared["customFieldData"] == {ids["Company"]: "Analytical Engines"}


async def test_an_empty_patch_changes_nothing(client: httpx.AsyncClient, ids: dict[str, str]) -> None:
    entry = (await create(client, lead(ids))).json()
    response = await patch(client, entry["id"], {})
    assert response.status_code == 200
    assert response.json() == entry


async def test_lead_state_changed_fires_only_on_a_real_change(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    entry = (await create(client, lead(ids))).json()
    assert (await patch(client, entry["id"], {"leadStateId": ids["New"]})).status_code == 200
    assert (await patch(client, entry["id"], {"data": {"note": "called"}})).status_code == 200
    assert len(state.events) == 2
    moved = await patch(client, entry["id"], {"leadStateId": ids["Contacted"]})
    assert moved.json()["leadStateId"] == ids["Contacted"]
    events = (await client.get("/sandbox/events", params={"after": 2})).json()["events"]
    assert [(e["seq"], e["type"], e["previousLeadStateId"], e["leadStateId"]) for e in events] == [
        (3, "table.entry.leadState.changed", ids["New"], ids["Contacted"])
    ]


async def test_a_replayed_patch_fires_no_second_event(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    entry = (await create(client, lead(ids))).json()
    first = await patch(client, entry["id"], {"leadStateId": ids["Won"]}, key="p1")
    await patch(client, entry["id"], {"leadStateId": ids["Lost"]})
    replay = await patch(client, entry["id"], {"leadStateId": ids["Won"]}, key="p1")
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert state.entries[entry["id"]]["leadStateId"] == ids["Lost"]
    assert len(state.events) == 4


BAD_PATCHES: list[tuple[str, Any, str]] = [
    ("state removed", {"leadStateId": None}, "leadStateId"),
    ("unknown state", {"leadStateId": "00000000-0000-4000-8000-000000000000"}, "leadStateId"),
    ("unknown custom field id", {"customFieldData": {"Budget": 1}}, "custom field"),
    ("unknown key", {"tableId": DEMO_TABLE_ID}, "unknown field"),
    ("read-only key", {"createdAt": "2024-01-01T00:00:00Z"}, "unknown field"),
    ("data not an object", {"data": "x"}, "data"),
    ("custom fields not an object", {"customFieldData": 5}, "customFieldData"),
    ("bad date", {"followUpDate": "next tuesday"}, "followUpDate"),
    ("date not a string", {"firstOpenedAt": 1714550400}, "firstOpenedAt"),
    ("appointment type not a string", {"interestedInAppointmentTypeId": 1}, "interestedInAppointmentTypeId"),
    ("array patch", [1], "merge patch"),
    ("null patch", None, "merge patch"),
]


@pytest.mark.parametrize(("body", "word"), [c[1:] for c in BAD_PATCHES], ids=[c[0] for c in BAD_PATCHES])
async def test_patch_refuses_with_400(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str], body: Any, word: str
) -> None:
    entry = (await create(client, lead(ids))).json()
    response = await patch(client, entry["id"], body)
    assert response.status_code == 400
    assert word in response.json()["error"]
    assert state.entries[entry["id"]] == entry
    assert len(state.events) == 2


async def test_patch_of_an_unknown_entry_is_404(client: httpx.AsyncClient, ids: dict[str, str]) -> None:
    response = await patch(client, str(uuid.uuid4()), {"data": {"a": 1}})
    assert response.status_code == 404
    assert (await client.get(f"/connect/table_entries/{uuid.uuid4()}")).status_code == 404


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", None], ids=["json", "text", "missing"]
)
async def test_patch_needs_the_merge_patch_content_type(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str], content_type: str | None
) -> None:
    entry = (await create(client, lead(ids))).json()
    request = client.build_request(
        "PATCH", f"/connect/table_entries/{entry['id']}", content=b'{"data": {"a": 1}}'
    )
    assert "Content-Type" not in request.headers
    if content_type is not None:
        request.headers["Content-Type"] = content_type
    response = await client.send(request)
    assert response.status_code == 415
    assert state.entries[entry["id"]]["data"] == entry["data"]


async def test_merge_patch_content_type_may_carry_a_charset(
    client: httpx.AsyncClient, ids: dict[str, str]
) -> None:
    entry = (await create(client, lead(ids))).json()
    response = await client.patch(
        f"/connect/table_entries/{entry['id']}",
        content=b'{"data": {"a": 1}}',
        headers={"Content-Type": "application/merge-patch+json; charset=utf-8"},
    )
    assert response.status_code == 200
    assert response.json()["data"]["a"] == 1


# -- control routes ------------------------------------------------------------------------------


async def test_entries_listing_and_event_paging(client: httpx.AsyncClient, ids: dict[str, str]) -> None:
    a = (await create(client, lead(ids))).json()
    b = (await create(client, lead(ids))).json()
    listing = (await client.get("/sandbox/entries")).json()["entries"]
    assert [e["id"] for e in listing] == [a["id"], b["id"]]
    later = (await client.get("/sandbox/events", params={"after": 2})).json()["events"]
    assert [e["seq"] for e in later] == [3, 4]
    assert {e["entryId"] for e in later} == {b["id"]}
    assert (await client.get("/sandbox/events", params={"after": 4})).json()["events"] == []
    assert (await client.get("/sandbox/events", params={"after": "x"})).status_code == 400


async def test_reset_clears_entries_events_keys_and_faults(
    client: httpx.AsyncClient, state: SandboxState, ids: dict[str, str]
) -> None:
    await create(client, lead(ids), key="k")
    put = await client.put("/sandbox/faults", json={"error_rate": 0.5})
    assert put.status_code == 200
    response = await client.post("/sandbox/reset")
    assert response.status_code == 200
    assert not state.entries
    assert not len(state.events)
    assert not state.idempotency.records
    assert state.faults == FaultConfig()
    assert (await client.get("/sandbox/faults")).json()["error_rate"] == 0.0
    # The key is free again: another body under it creates, and events count from 1.
    again = await create(client, lead(ids, data={"other": True}), key="k")
    assert again.status_code == 201
    assert [e["seq"] for e in (await client.get("/sandbox/events")).json()["events"]] == [1, 2]
    assert (await client.get(f"/connect/tables/{DEMO_TABLE_ID}")).status_code == 200


async def test_unknown_routes_and_methods_answer_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/connect/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not found"}
    wrong = await client.delete("/connect/table_entries")
    assert wrong.status_code == 405
    assert "POST" in wrong.headers["Allow"]
    assert wrong.json()["error"]


def test_state_repr_does_not_show_the_api_key(state: SandboxState) -> None:
    assert DEMO_API_KEY not in repr(state)


# -- the Graph API stand-in (the Meta Lead Ads mapping's enrich) --------------------------------


async def test_graph_stand_in_answers_a_lead_made_up_from_its_id(client: httpx.AsyncClient) -> None:
    url = "/graph/v21.0/444444444444?fields=created_time,field_data,ad_id,form_id"
    first = await client.get(url, headers={"Authorization": "Bearer any-page-token"})
    again = await client.get(url, headers={"Authorization": "Bearer another-token"})
    other = await client.get("/graph/v21.0/555555555555", headers={"Authorization": "Bearer t"})
    assert first.status_code == again.status_code == other.status_code == 200
    lead = first.json()
    assert lead["id"] == "444444444444"
    answers = {field["name"]: field["values"][0] for field in lead["field_data"]}
    assert set(answers) == {"email", "full_name", "phone_number", "company_name"}
    assert answers["email"].endswith("@example.com")
    assert answers["phone_number"].startswith("+4420794600")  # Ofcom's drama range
    assert again.json() == lead  # the same id, the same lead
    assert other.json()["field_data"][0]["values"][0] != answers["email"]


@pytest.mark.parametrize(
    ("path", "headers", "kind"),
    [
        ("/graph/v21.0/444444444444", {"Authorization": ""}, "OAuthException"),
        ("/graph/v21.0/444444444444", {"Authorization": "Basic eDp5"}, "OAuthException"),
        ("/graph/v21.0/not-a-lead", {"Authorization": "Bearer t"}, "GraphMethodException"),
    ],
)
async def test_graph_stand_in_refuses_like_graph(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], kind: str
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == kind
