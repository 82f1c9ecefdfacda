"""The OpenAPI document stays true: it documents exactly the routes the app serves, and the
running pipeline's answers conform to it (schemathesis, positive and negative cases).

Schemathesis calls the app over loopback with `requests`, from a worker thread, while uvicorn,
the worker and the sandbox run on the test's event loop (tests/pipeline.py). Generated cases
are steered some of the time to a real mapping name, a real (dead-lettered) delivery id and the
right admin token, so the success answers are checked too, not only the 404s and 401s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.app import routes
from bridge.http.openapi import document
from tests.pipeline import CONTACT_MAPPING, SECRET, Pipeline, pipeline

ADMIN_TOKEN = "openapi-admin-token-3f9c"
EXAMPLES = 1000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPEN_MAPPING = """\
version: 1
name: open
provider: none
verify: {insecure: true}
table: 2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f
action: create
lead:
  data:
    email: email
"""
HANDSHAKE_MAPPING = """\
version: 1
name: meta
provider: meta-lead-ads
verify: {app_secret: meta-app-secret, verify_token: meta-verify-token}
table: 2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f
action: create
lead:
  data:
    email: email
"""
# A dead letter: this mapping requires a field the posted payload does not have.
DEAD_MAPPING = """\
version: 1
name: dead
provider: none
verify: {insecure: true}
table: 2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f
action: create
lead:
  data:
    email: {path: email, required: true}
"""


def served_operations() -> set[tuple[str, str]]:
    return {(route.path, method) for route in routes() for method in route.methods or ()}


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, operations in doc["paths"].items() for method in operations}


def test_every_served_route_is_documented_and_nothing_else() -> None:
    served = served_operations()
    documented = documented_operations(document())
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert ("/openapi.json", "GET") in served


def test_the_document_is_openapi_3_1_with_the_contract_statuses() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    hooks = doc["paths"]["/hooks/{name}"]
    assert set(hooks["post"]["responses"]) >= {
        "200", "202", "400", "401", "404", "408", "413", "415", "429", "503",
    }  # fmt: skip
    assert "405" in hooks["put"]["responses"]
    # The bridge's 503 carries Retry-After; the server's overload 503 (text/plain) does not.
    assert "Retry-After" in hooks["post"]["responses"]["503"]["headers"]
    assert set(hooks["post"]["responses"]["503"]["content"]) == {"application/json", "text/plain"}
    record = doc["components"]["schemas"]["DeliveryRecord"]
    assert {"id", "mapping", "status"} <= set(record["properties"])
    assert "body" not in record["properties"]
    assert "headers" not in record["properties"]
    for path, operations in doc["paths"].items():
        if path.startswith("/admin/"):
            for operation in operations.values():
                assert operation["security"] == [{"adminToken": []}]
                assert {"401", "404"} <= set(operation["responses"])
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    schemathesis.openapi.from_dict(doc)  # loads as a valid document


async def _dead_letter(pipe: Pipeline, n: int) -> str:
    response = await pipe.http.post(f"{pipe.url}/hooks/dead", json={"name": f"no email here {n}"})
    assert response.status_code == 202
    delivery_id: str = response.json()["delivery_id"]
    await pipe.wait_status(delivery_id, "dead")
    return delivery_id


def run_schemathesis(base_url: str, doc: dict[str, Any], known_ids: list[str]) -> Counter[str]:
    """Generate cases for every operation and check each answer against the document."""
    schema = schemathesis.openapi.from_dict(doc)
    strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    tally: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, data=st.data())
    def check(case: Any, data: st.DataObject) -> None:
        params = case.path_parameters or {}
        if "name" in params and data.draw(st.integers(0, 3)) > 0:
            params["name"] = data.draw(st.sampled_from(["open", "open", "contact", "meta", "dead"]))
        if "id" in params and data.draw(st.booleans()):
            params["id"] = data.draw(st.sampled_from(known_ids))
        if case.operation.path.startswith("/admin/") and data.draw(st.integers(0, 3)) > 0:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
        response = case.call(base_url=base_url, timeout=10)
        case.validate_response(response, checks=CHECKS)
        tally[f"{case.method} {case.operation.path} {response.status_code}"] += 1

    check()
    return tally


async def test_the_running_pipeline_conforms_to_the_document(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "contact.yaml": CONTACT_MAPPING,
        "open.yaml": OPEN_MAPPING,
        "meta.yaml": HANDSHAKE_MAPPING,
        "dead.yaml": DEAD_MAPPING,
    }
    async with pipeline(
        redis_url,
        tmp_path / "mappings",
        mapping_files=files,
        environ={"CONTACT_SECRET": SECRET},
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
    ) as pipe:
        served = await pipe.http.get(f"{pipe.url}/openapi.json")
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/json"
        doc = served.json()
        assert doc == document()
        known_ids = [await _dead_letter(pipe, n) for n in range(3)]
        started = time.perf_counter()
        tally = await asyncio.to_thread(run_schemathesis, pipe.url, doc, known_ids)
        elapsed = time.perf_counter() - started
    total = sum(tally.values())
    statuses = Counter(key.rsplit(" ", 1)[1] for key in tally.elements())
    with capsys.disabled():
        print(
            f"\nschemathesis: {total} cases over {len({k.rsplit(' ', 1)[0] for k in tally})} operations "
            f"in {elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}"
        )
    assert total >= EXAMPLES
    # The steering reached the success answers, not only refusals.
    for expected in ("GET /admin/dlq 200", "GET /healthz 200", "GET /readyz 200"):
        assert tally[expected] > 0, expected
    assert any(k.startswith("POST /hooks/{name} 20") for k in tally)
