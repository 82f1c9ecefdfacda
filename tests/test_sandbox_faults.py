"""Fault injection of the Connect sandbox (each kind at rate 1.0, so deterministic), its
configuration routes, and the sandbox served over real loopback HTTP by uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette

from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID, FaultConfig, SandboxState, create_sandbox_app
from bridge.sandbox.faults import Fault, FaultInjector

HANG_S = 0.2
AUTH = {"Authorization": f"Bearer {DEMO_API_KEY}"}


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
        transport=httpx.ASGITransport(app=app), base_url="http://sandbox", headers=AUTH
    ) as client:
        yield client


def lead(state: SandboxState) -> dict[str, Any]:
    table = state.tables[DEMO_TABLE_ID]
    return {
        "tableId": DEMO_TABLE_ID,
        "data": {"email": "ada@example.com"},
        "leadStateId": table.default_state_id,
    }


async def set_faults(client: httpx.AsyncClient, **config: Any) -> None:
    response = await client.put("/sandbox/faults", json=config)
    assert response.status_code == 200, response.text


# -- each fault kind -----------------------------------------------------------------------------


async def test_error_answers_500_and_does_nothing(client: httpx.AsyncClient, state: SandboxState) -> None:
    await set_faults(client, error_rate=1.0)
    response = await client.post("/connect/table_entries", json=lead(state), headers={"Idempotency-Key": "k"})
    assert response.status_code == 500
    assert not state.entries
    assert not len(state.events)
    assert not state.idempotency.records


async def test_rate_limit_answers_429_with_retry_after(
    client: httpx.AsyncClient, state: SandboxState
) -> None:
    await set_faults(client, rate_limit_rate=1.0, retry_after_s=7)
    response = await client.post("/connect/table_entries", json=lead(state))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert not state.entries


async def test_timeout_hangs_then_answers_504_doing_nothing(
    client: httpx.AsyncClient, state: SandboxState
) -> None:
    await set_faults(client, timeout_rate=1.0, timeout_s=HANG_S)
    started = time.monotonic()
    response = await client.post("/connect/table_entries", json=lead(state), headers={"Idempotency-Key": "k"})
    assert response.status_code == 504
    assert time.monotonic() - started >= HANG_S
    assert not state.entries
    assert not state.idempotency.records


async def test_lost_response_commits_the_write_and_a_retry_gets_the_replay(
    client: httpx.AsyncClient, state: SandboxState
) -> None:
    await set_faults(client, lost_response_rate=1.0, timeout_s=HANG_S)
    started = time.monotonic()
    lost = await client.post("/connect/table_entries", json=lead(state), headers={"Idempotency-Key": "k"})
    assert lost.status_code == 502
    assert time.monotonic() - started >= HANG_S
    assert len(state.entries) == 1
    assert [e["type"] for e in state.events] == ["table.entry.added", "table.entry.leadState.changed"]

    await set_faults(client)
    retry = await client.post("/connect/table_entries", json=lead(state), headers={"Idempotency-Key": "k"})
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == next(iter(state.entries))
    assert len(state.entries) == 1
    assert len(state.events) == 2


async def test_lost_response_applies_a_patch(client: httpx.AsyncClient, state: SandboxState) -> None:
    entry = (await client.post("/connect/table_entries", json=lead(state))).json()
    await set_faults(client, lost_response_rate=1.0, timeout_s=HANG_S)
    response = await client.patch(
        f"/connect/table_entries/{entry['id']}",
        content=b'{"data": {"phone": "+4930123456"}}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 502
    assert state.entries[entry["id"]]["data"]["phone"] == "+4930123456"


async def test_faults_spare_reads_unless_asked(client: httpx.AsyncClient) -> None:
    await set_faults(client, error_rate=1.0)
    assert (await client.get(f"/connect/tables/{DEMO_TABLE_ID}")).status_code == 200
    await set_faults(client, error_rate=1.0, apply_to_reads=True)
    assert (await client.get(f"/connect/tables/{DEMO_TABLE_ID}")).status_code == 500
    assert (await client.get("/sandbox/entries")).status_code == 200  # control routes never fault


async def test_auth_is_checked_before_faults(app: Starlette, state: SandboxState) -> None:
    state.faults = FaultConfig(error_rate=1.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as anon:
        assert (await anon.post("/connect/table_entries", json=lead(state))).status_code == 401


async def test_latency_is_added_to_every_connect_request(client: httpx.AsyncClient) -> None:
    await set_faults(client, latency_ms=HANG_S * 1000)
    started = time.monotonic()
    assert (await client.get("/connect/tables")).status_code == 200
    assert time.monotonic() - started >= HANG_S
    await set_faults(client, latency_ms=60_000)
    # Control routes get no latency: this would take a minute if they did.
    assert (await asyncio.wait_for(client.get("/sandbox/faults"), timeout=5)).status_code == 200


async def test_faults_given_at_app_creation_apply() -> None:
    app = create_sandbox_app(faults=FaultConfig(rate_limit_rate=1.0))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sandbox", headers=AUTH
    ) as client:
        response = await client.post("/connect/table_entries", json=lead(app.state.sandbox))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


# -- configuration -------------------------------------------------------------------------------


def test_a_seed_makes_the_draws_reproducible() -> None:
    config = FaultConfig(error_rate=0.3, rate_limit_rate=0.3, seed=42)
    one, two = FaultInjector(config), FaultInjector(config)
    draws = [one.draw(write=True) for _ in range(200)]
    assert draws == [two.draw(write=True) for _ in range(200)]
    assert set(draws) == {Fault.ERROR, Fault.RATE_LIMIT, None}
    assert 40 <= draws.count(None) <= 120  # about 40% pass


def test_no_fault_is_drawn_when_every_rate_is_zero() -> None:
    injector = FaultInjector(FaultConfig(latency_ms=5))
    assert not injector.active
    assert injector.latency_s == 0.005
    assert injector.draw(write=True) is None


@pytest.mark.parametrize(
    "config",
    [{"error_rate": 1.5}, {"error_rate": -0.1}, {"error_rate": 0.6, "timeout_rate": 0.6}, {"bogus": 1}],
    ids=["above one", "negative", "sum above one", "unknown key"],
)
def test_invalid_fault_configs_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultConfig.model_validate(config)


async def test_fault_routes_round_trip_and_refuse_invalid_configs(
    client: httpx.AsyncClient, state: SandboxState
) -> None:
    put = await client.put("/sandbox/faults", json={"error_rate": 0.25, "seed": 7, "timeout_s": 0.5})
    assert put.status_code == 200
    got = (await client.get("/sandbox/faults")).json()
    assert got == put.json()
    assert (got["error_rate"], got["seed"], got["timeout_s"], got["rate_limit_rate"]) == (0.25, 7, 0.5, 0.0)
    assert state.faults.error_rate == 0.25

    refused = await client.put("/sandbox/faults", json={"error_rate": 2})
    assert refused.status_code == 400
    assert "error_rate" in refused.json()["error"]
    assert (await client.put("/sandbox/faults", content=b"{oops")).status_code == 400
    assert state.faults.error_rate == 0.25


# -- over real loopback HTTP ---------------------------------------------------------------------


@pytest.fixture
async def served(app: Starlette) -> AsyncIterator[str]:
    """The sandbox app served by uvicorn on 127.0.0.1, a free port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert not task.done(), "uvicorn stopped during start-up"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=5)


async def test_over_loopback_a_lost_response_is_recovered_by_a_retry(
    served: str, state: SandboxState
) -> None:
    body = lead(state)
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=httpx.Timeout(HANG_S / 2)) as client:
        table = await client.get(f"/connect/tables/{DEMO_TABLE_ID}")
        assert table.status_code == 200
        assert table.headers["content-type"] == "application/json"

        await set_faults(client, lost_response_rate=1.0, timeout_s=HANG_S * 2)
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/connect/table_entries", json=body, headers={"Idempotency-Key": "d1:0"})
        deadline = time.monotonic() + 5
        while not state.entries:  # committed although the answer never comes
            assert time.monotonic() < deadline, "the lost write was not committed"
            await asyncio.sleep(0.01)

        await set_faults(client)
        retry = await client.post("/connect/table_entries", json=body, headers={"Idempotency-Key": "d1:0"})
        assert retry.status_code == 201
        assert retry.headers["Idempotent-Replayed"] == "true"
        entry_id = retry.json()["id"]

        patched = await client.patch(
            f"/connect/table_entries/{entry_id}",
            content=b'{"data": {"email": null}}',
            headers={"Content-Type": "application/merge-patch+json", "Idempotency-Key": "d1:1"},
        )
        assert patched.status_code == 200
        assert patched.json()["data"] == {}
        events = (await client.get("/sandbox/events")).json()["events"]
        assert [e["type"] for e in events] == ["table.entry.added", "table.entry.leadState.changed"]
    assert len(state.entries) == 1
