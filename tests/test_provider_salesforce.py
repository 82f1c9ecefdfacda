"""Salesforce outbound messages: token + organization id, the SOAP body as JSON, the Ack reply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.errors import InvalidBody, Unauthorized, UnsupportedMediaType
from bridge.providers import InboundRequest, build_provider
from bridge.providers.base import body_hash
from bridge.providers.bodies import parse_xml

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
SAMPLE = (PAYLOADS / "salesforce-lead-outbound.xml").read_bytes()
XML = {"content-type": "text/xml; charset=utf-8"}
ORG_18 = "00D5g000004SdFgEAK"
NOW_S = 1_715_690_000.0


def request(
    body: bytes = SAMPLE, query: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> InboundRequest:
    return InboundRequest(
        method="POST",
        url="https://leads.example.com/hooks/salesforce?token=sf-token",
        path="/hooks/salesforce",
        query={"token": "sf-token"} if query is None else query,
        headers=XML if headers is None else headers,
        body=body,
    )


def provider(org: str = ORG_18, token: str | list[str] = "sf-token") -> Any:  # noqa: S107
    return build_provider("salesforce", {"organization_id": org, "token": token})


def message(notifications: str, org: str = ORG_18) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k5g000000CaRnAAK</ActionId>
   <SessionId>00D!AQ0AQ.session</SessionId>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/59.0</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/59.0</PartnerUrl>
   {notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


def notification(notification_id: str, lead_id: str = "00Q5g00000XyZ12EAB") -> str:
    return f"""<Notification><Id>{notification_id}</Id>
      <sObject xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
        <sf:Id>{lead_id}</sf:Id><sf:Email>a@example.com</sf:Email></sObject></Notification>"""


def test_sample_parses_to_the_documented_shape() -> None:
    sf = provider()
    verified = sf.verify(request(), NOW_S)
    payload = sf.parse(verified)
    assert payload == {
        "OrganizationId": ORG_18,
        "ActionId": "04k5g000000CaRnAAK",
        "SessionId": None,
        "EnterpriseUrl": "https://acme.my.salesforce.com/services/Soap/c/59.0/00D5g000004SdFg",
        "PartnerUrl": "https://acme.my.salesforce.com/services/Soap/u/59.0/00D5g000004SdFg",
        "Notification": [
            {
                "Id": "04l5g00000ABcDeAAF",
                "sObject": {
                    "type": "Lead",
                    "Id": "00Q5g00000XyZ12EAB",
                    "Company": "Initech",
                    "Email": "Peter.Gibbons@Initech.example",
                    "FirstName": "Peter",
                    "LastModifiedDate": "2024-05-14T11:20:33.000Z",
                    "LastName": "Gibbons",
                    "Phone": None,
                    "Status": "Working - Contacted",
                },
            },
            {
                "Id": "04l5g00000ABcDfAAF",
                "sObject": {
                    "type": "Lead",
                    "Id": "00Q5g00000XyZ13EAB",
                    "Company": "Chotchkie's",
                    "Email": "joanna@chotchkies.example",
                    "FirstName": "Joanna",
                    "LastModifiedDate": "2024-05-14T11:21:05.000Z",
                    "LastName": "Flair",
                    "Phone": "+12127365000",
                    "Status": "Closed - Converted",
                },
            },
        ],
    }
    assert sf.event_id(verified, payload) == "04l5g00000ABcDeAAF,04l5g00000ABcDfAAF"
    headers = json.loads((PAYLOADS / "salesforce-lead-outbound.headers.json").read_text())
    assert sf.reparse(SAMPLE, headers) == payload


def test_a_single_notification_is_still_a_list() -> None:
    sf = provider()
    verified = sf.verify(request(message(notification("04l000000000001AAA"))), NOW_S)
    payload = sf.parse(verified)
    assert isinstance(payload["Notification"], list)
    assert payload["Notification"][0]["sObject"]["Id"] == "00Q5g00000XyZ12EAB"
    assert payload["SessionId"] == "00D!AQ0AQ.session"


def test_event_id_is_sorted_notification_ids_hashed_when_long() -> None:
    sf = provider()
    body = message(notification("04l000000000002AAA") + notification("04l000000000001AAA"))
    verified = sf.verify(request(body), NOW_S)
    assert sf.event_id(verified, sf.parse(verified)) == "04l000000000001AAA,04l000000000002AAA"
    many = message("".join(notification(f"04l0000000{i:05d}AAA") for i in range(100)))
    verified = sf.verify(request(many), NOW_S)
    assert sf.event_id(verified, sf.parse(verified)).startswith("sha256:")
    empty = message("")
    verified = sf.verify(request(empty), NOW_S)
    assert sf.event_id(verified, sf.parse(verified)) == body_hash(empty)


def test_token_is_required_and_rotatable() -> None:
    provider(token=["new", "sf-token"]).verify(request(), NOW_S)
    provider().verify(request(query={}, headers=XML | {"x-webhook-token": "sf-token"}), NOW_S)
    for query in ({}, {"token": "wrong"}, {"token": ""}):
        with pytest.raises(Unauthorized):
            provider().verify(request(query=query), NOW_S)


def test_organization_id_must_match_in_15_or_18_character_form() -> None:
    provider(org=ORG_18[:15]).verify(request(), NOW_S)
    with pytest.raises(Unauthorized):
        provider(org="00D5g000004SdFhEAK").verify(request(), NOW_S)
    with pytest.raises(Unauthorized):
        provider().verify(request(message("", org="00D000000000001AAA")), NOW_S)
    with pytest.raises(Unauthorized):
        provider().verify(request(message("", org="not-an-org-id")), NOW_S)
    for bad in ("", "00D5g000004SdF", "005g000004SdFgEAK", "00D5g000004SdFg-AK"):
        with pytest.raises(ValidationError):
            provider(org=bad)


def test_the_wrong_token_is_checked_before_the_body_is_read() -> None:
    with pytest.raises(Unauthorized):
        provider().verify(request(b"<not xml", query={"token": "wrong"}), NOW_S)


@pytest.mark.parametrize(
    "body",
    [
        b"<not xml",
        b"<notifications/>",  # not a SOAP envelope
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
    ],
)
def test_bad_or_hostile_xml_is_invalid_body(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        provider().verify(request(body), NOW_S)


def test_only_xml_content_types() -> None:
    with pytest.raises(UnsupportedMediaType):
        provider().verify(request(headers={"content-type": "application/json"}), NOW_S)
    provider().verify(request(headers={"content-type": "application/xml"}), NOW_S)


@pytest.mark.parametrize("duplicate", [False, True])
def test_accepted_and_duplicate_deliveries_get_the_soap_ack(duplicate: bool) -> None:
    reply = provider().accepted_response("d-1", duplicate)
    assert reply is not None
    assert reply.status == 200
    assert reply.media_type == "text/xml"
    root = parse_xml(reply.body)
    assert root.tag == "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
    ack = root.find(
        "{http://schemas.xmlsoap.org/soap/envelope/}Body/"
        "{http://soap.sforce.com/2005/09/outbound}notificationsResponse/"
        "{http://soap.sforce.com/2005/09/outbound}Ack"
    )
    assert ack is not None
    assert ack.text == "true"
