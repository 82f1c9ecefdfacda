"""`salesforce`: Salesforce outbound messages (workflow / flow SOAP notifications).

Sources: https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging.htm
and its "Understanding the Outbound Messaging WSDL" page. Salesforce POSTs a SOAP 1.1 envelope
(`text/xml`) with a `notifications` element: `OrganizationId`, `ActionId`, `SessionId` (nillable),
`EnterpriseUrl`, `PartnerUrl` and up to 100 `Notification` elements, each `{Id, sObject}` with the
fields chosen in Setup. It retries for up to 24 hours until it gets the SOAP `Ack`.

Salesforce signs nothing (its client certificate needs mutual TLS at the ingress) and cannot add
headers, so the endpoint URL carries a token (`…/hooks/<name>?token=…`, or the header named by
`header`), and the notification's `OrganizationId` must match `organization_id` (15- or 18-char
form; the first 15 characters identify the org). Expressions see
`{OrganizationId, ActionId, SessionId, EnterpriseUrl, PartnerUrl, Notification: [{Id, sObject:
{type, Id, Email, …}}]}`: namespace prefixes dropped, `Notification` always a list, `xsi:nil` as
null, `sObject.type` from its `xsi:type` (`sf:Lead` → `Lead`). The XML goes through defusedxml
(no DTD, entities or external references). Accepted and duplicate deliveries both get the SOAP
`notificationsResponse` with `<Ack>true</Ack>`. The event id is the notification `Id`s, sorted
and joined (hashed when long).
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from xml.etree.ElementTree import Element

from pydantic import field_validator

from bridge.errors import InvalidBody, Unauthorized
from bridge.providers.base import InboundRequest, Provider, ProviderResponse, Verified, body_hash, short_id
from bridge.providers.bodies import parse_xml
from bridge.providers.checks import TokenOptions, check_token

XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
HEADER_FIELDS = ("OrganizationId", "ActionId", "SessionId", "EnterpriseUrl", "PartnerUrl")
ORG_ID = re.compile(r"00D[A-Za-z0-9]{12}([A-Za-z0-9]{3})?")
ACK = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<soapenv:Body>"
    b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>'
    b"</soapenv:Body></soapenv:Envelope>"
)


class SalesforceOptions(TokenOptions):
    organization_id: str

    @field_validator("organization_id")
    @classmethod
    def _org_id(cls, value: str) -> str:
        if not ORG_ID.fullmatch(value):
            raise ValueError("organization_id is a 15- or 18-character Salesforce id starting 00D")
        return value


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def element_value(element: Element) -> Any:
    """An element as JSON: null when xsi:nil, an object when it has children, else its text."""
    if element.get(f"{XSI}nil", "").lower() in ("true", "1"):
        return None
    if len(element) == 0:
        return element.text or ""
    value: dict[str, Any] = {}
    xsi_type = element.get(f"{XSI}type")
    if xsi_type:
        value["type"] = xsi_type.rsplit(":", 1)[-1]
    for child in element:
        name, item = local_name(child.tag), element_value(child)
        if name not in value:
            value[name] = item
        elif isinstance(value[name], list) and name != "type":
            value[name].append(item)
        else:
            value[name] = [value[name], item]
    return value


def parse_notifications(body: bytes) -> dict[str, Any]:
    """A SOAP outbound message as the object mapping expressions see (InvalidBody if not one)."""
    root = parse_xml(body)
    if local_name(root.tag) != "Envelope":
        raise InvalidBody("not a SOAP envelope")
    soap_body = next((child for child in root if local_name(child.tag) == "Body"), None)
    children = list(soap_body) if soap_body is not None else []
    notifications = next((child for child in children if local_name(child.tag) == "notifications"), None)
    if notifications is None:
        raise InvalidBody("no outbound-message notifications in the SOAP body")
    message: dict[str, Any] = {name: None for name in HEADER_FIELDS}
    message["Notification"] = []
    for child in notifications:
        name = local_name(child.tag)
        if name == "Notification":
            message["Notification"].append(element_value(child))
        elif name in HEADER_FIELDS:
            message[name] = element_value(child)
    return message


def same_org(configured: str, received: Any) -> bool:
    """Org ids match on their first 15 characters (the 18-char form adds a checksum)."""
    if not isinstance(received, str) or not ORG_ID.fullmatch(received):
        return False
    return hmac.compare_digest(configured[:15].encode(), received[:15].encode())


class SalesforceProvider(Provider[SalesforceOptions]):
    name = "salesforce"
    Options = SalesforceOptions
    content_types = frozenset({"text/xml", "application/xml"})

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        check_token(request, self.options)
        message = parse_notifications(request.body)
        if not same_org(self.options.organization_id, message["OrganizationId"]):
            raise Unauthorized("organization id does not match")
        return Verified(request=request, provider=self.name)

    def parse(self, verified: Verified) -> Any:
        return parse_notifications(verified.request.body)

    def event_id(self, verified: Verified, payload: Any) -> str:
        notifications = payload.get("Notification") if isinstance(payload, dict) else None
        ids = [n.get("Id") for n in notifications or [] if isinstance(n, dict)]
        texts = [i for i in ids if isinstance(i, str) and i]
        if not texts or len(texts) != len(notifications or []):
            return body_hash(verified.request.body)
        return short_id(",".join(sorted(texts)))

    def accepted_response(self, delivery_id: str, duplicate: bool) -> ProviderResponse | None:
        return ProviderResponse(status=200, body=ACK, media_type="text/xml")
