"""Event ids that must tell apart two different changes sent with the same vendor id (else the
second is answered "duplicate" and dropped), and stay the same for a retry of one change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bridge.providers import InboundRequest, Verified, build_provider

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"


def _event_id(provider: Any, body: bytes, content_type: str) -> str:
    request = InboundRequest(
        method="POST", url="", path="", query={}, headers={"content-type": content_type}, body=body
    )
    verified = Verified(request=request, provider=provider.name)
    return str(provider.event_id(verified, provider.parse(verified)))


# --- Jotform: an edited submission is posted again with the same submissionID ---------------------


def jotform(action: str, raw: dict[str, Any], **extra: str) -> bytes:
    fields = {"action": action, "formID": "241334567890123", "submissionID": "5912345678901234567"}
    return urlencode(fields | extra | {"rawRequest": json.dumps(raw)}).encode()


def test_jotform_edit_of_a_submission_is_not_a_duplicate_of_it() -> None:
    provider = build_provider("jotform", {"token": "jt"})
    form = "application/x-www-form-urlencoded"
    first = {"q4_email": "kj@example.com", "submitDate": "1715690004000", "event_id": "1715689950001_2413_a"}
    edit = {"q4_email": "kj@nasa.example", "submitDate": "1715776404000", "event_id": "1715776400000_2413_b"}
    second_edit = edit | {"submitDate": "1715862804000", "event_id": "1715862800000_2413_c"}
    new_id = _event_id(provider, jotform("", first), form)
    edit_id = _event_id(provider, jotform("edit", edit), form)
    # A new submission keeps the id it always had (a retry accepted before an upgrade still dedupes).
    assert new_id == "5912345678901234567"
    assert edit_id != new_id
    assert _event_id(provider, jotform("edit", second_edit), form) not in {new_id, edit_id}
    # A retry of the same edit (other field order, same contents) is still a duplicate.
    assert _event_id(provider, jotform("edit", edit, ip="203.0.113.7"), form) == edit_id


def test_jotform_sample_keeps_its_event_id() -> None:
    provider = build_provider("jotform", {"token": "jt"})
    body = (PAYLOADS / "jotform-quote-request.txt").read_bytes()
    headers = json.loads((PAYLOADS / "jotform-quote-request.headers.json").read_text())
    assert _event_id(provider, body, headers["content-type"]) == "5912345678901234567"


# --- Close: an event updated by later actions keeps its id ---------------------------------------


def test_close_updated_event_is_not_a_duplicate_of_its_first_version() -> None:
    provider = build_provider("close", {"secret": b"close key".hex()})
    sample = json.loads((PAYLOADS / "close-lead-status.json").read_text())
    event = sample["event"]
    first = json.dumps(sample).encode()
    # Close merged a second action on the same lead into the event: same id, later date_updated.
    updated = sample | {
        "event": event
        | {
            "date_updated": "2024-05-14T09:41:25.002000",
            "changed_fields": ["date_updated", "status_id", "status_label"],
            "data": event["data"] | {"status_label": "Customer"},
        }
    }
    first_id = _event_id(provider, first, "application/json")
    assert first_id == event["id"]  # unchanged: what older versions stored
    updated_id = _event_id(provider, json.dumps(updated).encode(), "application/json")
    assert updated_id != first_id
    # The same version sent again (a retry) is the same event.
    assert _event_id(provider, json.dumps(updated, indent=1).encode(), "application/json") == updated_id
