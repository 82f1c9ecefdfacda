"""Shipped mappings against sequences of webhooks their vendors document (reschedules, reordering)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from bridge.mapping import load_mappings
from bridge.mapping.env import read_env_file

ROOT = Path(__file__).parent.parent
MAPPINGS = ROOT / "mappings"
PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"


def shipped(name: str) -> Any:
    compiled = load_mappings(MAPPINGS / f"{name}.yaml", read_env_file(MAPPINGS / "sandbox.env")).get(name)
    assert compiled is not None
    return compiled


async def test_calendly_reschedule_does_not_mark_the_lead_lost() -> None:
    """Calendly, "Webhook Payloads for Rescheduled Events"
    (https://developer.calendly.com/docs/api-guides/see-how-webhook-payloads-change-when-invitees-reschedule-events):
    when an invitee reschedules, BOTH invitee.created (the new booking) and invitee.canceled (the
    old one, with `rescheduled: true` and `new_invitee` set) are sent. The person still has a
    meeting: the cancellation half of a reschedule must not move the lead to Lost."""
    mapping = shipped("calendly-booking")
    created = json.loads((PAYLOADS / "calendly-booking.json").read_text())
    canceled = copy.deepcopy(created)
    canceled["event"] = "invitee.canceled"
    canceled["payload"]["status"] = "canceled"
    canceled["payload"]["rescheduled"] = True
    canceled["payload"]["new_invitee"] = (
        "https://api.calendly.com/scheduled_events/NEWEVENT/invitees/NEWINVITEE"
    )
    canceled["payload"]["cancellation"] = {"canceled_by": "Jo", "canceler_type": "invitee", "reason": None}

    plan = await mapping.plan(canceled)
    states = [command.state for command in plan.commands]
    assert "Lost" not in states, f"a reschedule's invitee.canceled gives state {states}"

    # a real cancellation (rescheduled: false) still marks the lead Lost
    canceled["payload"]["rescheduled"] = False
    canceled["payload"]["new_invitee"] = None
    plan = await mapping.plan(canceled)
    assert [command.state for command in plan.commands] == ["Lost"]


async def test_hubspot_changes_of_different_properties_are_ordered_apart() -> None:
    """HubSpot sends one contact.propertyChange per property and does not guarantee their order:
    the shipped mapping orders each property's changes among themselves (`order_scope`), so an
    older e-mail change delivered after a newer stage change is not stale (the pipeline test of
    `order_scope` is in test_delivery_order.py)."""
    mapping = shipped("hubspot-contact-sync")
    events = json.loads((PAYLOADS / "hubspot-contact-sync.json").read_text())
    plan = await mapping.plan(events)
    scopes = {event["propertyName"] for event in events}
    assert {(c.key, c.order_scope) for c in plan.commands} == {("123", scope) for scope in scopes}
    assert len(scopes) == 2


async def test_hubspot_events_the_mapping_is_not_for_make_no_lead() -> None:
    """An app subscribed to more than this mapping reads (contact.deletion, contact.creation,
    another property) gets those events in the same batches: an upsert for each would create,
    for a contact never seen, a lead with nothing but the default state (a deleted contact's
    included)."""
    mapping = shipped("hubspot-contact-sync")
    events = json.loads((PAYLOADS / "hubspot-contact-sync.json").read_text())
    base = events[0]
    bare = {k: v for k, v in base.items() if k not in ("propertyName", "propertyValue")}
    others = [
        bare | {"eventId": 901, "subscriptionType": "contact.deletion", "objectId": 777},
        bare | {"eventId": 902, "subscriptionType": "contact.creation", "objectId": 778},
        base | {"eventId": 903, "propertyName": "firstname", "propertyValue": "Ana", "objectId": 779},
    ]
    plan = await mapping.plan([*events, *others])
    assert {c.key for c in plan.commands} == {"123"}
    assert len(plan.commands) == len(events)
    stage = base | {"propertyName": "lifecyclestage", "propertyValue": "evangelist"}
    assert [c.state for c in (await mapping.plan([stage])).commands] == ["Won"]


async def test_free_text_phones_read_national_numbers_only_with_phone_region() -> None:
    """Jotform, Pipedrive, Salesforce and Webflow phone fields are free text: "(415) 555-0123" has
    no country code. PHONE_REGION (unset: none) names the country such numbers are read in."""
    payload = json.loads((PAYLOADS / "webflow-contact-form.json").read_text())
    payload["payload"]["data"]["Phone Number"] = "(415) 555-0123"
    environ = read_env_file(MAPPINGS / "sandbox.env")
    for region, phone in ((None, None), ("US", "+14155550123"), ("us", "+14155550123")):
        env = environ | ({"PHONE_REGION": region} if region else {})
        mapping = load_mappings(MAPPINGS / "webflow-contact-form.yaml", env).get("webflow-contact-form")
        assert mapping is not None
        (command,) = (await mapping.plan(payload)).commands
        assert command.data.get("phone") == phone, region
    payload["payload"]["data"]["Phone Number"] = "+44 20 7946 0958"  # with its country code: kept
    (command,) = (await mapping.plan(payload)).commands
    assert command.data.get("phone") == "+442079460958"
