"""HubSpot: the official SDK's and docs' test vectors, v3 URI decoding, `public_url`, versions.

The signatures here are either HubSpot's published values or computed in the test from the
published algorithm (hubspot-api-python, hubspot/utils/signature.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.errors import Unauthorized
from bridge.providers import InboundRequest, build_provider
from bridge.providers.base import body_hash
from bridge.providers.hubspot import decode_v3_uri

# hubspot-api-python tests/spec/utils/test_signature.py
SDK_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
SDK_BODY = b"{'example_field':'example_value'}"
SDK_URL = "https://www.example.com/webhook_uri"
SDK_V1 = "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
SDK_V2 = "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
SDK_V2_GET = "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
SDK_V3 = "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw="
SDK_V3_TIMESTAMP_MS = 15000000

# developers.hubspot.com "v1 request validation" example
DOC_V1_BODY = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM",'
    b'"changeFlag":"NEW","appId":54321}]'
)
DOC_V1 = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"

NOW_S = 1_715_690_000.0
BODY = b'[{"eventId":7,"objectId":1,"propertyName":"email","propertyValue":"a@example.com"}]'


def request(
    headers: dict[str, str], *, body: bytes = BODY, url: str = SDK_URL, method: str = "POST"
) -> InboundRequest:
    return InboundRequest(
        method=method,
        url=url,
        path="/hooks/hubspot",
        query={},
        headers={"content-type": "application/json"} | {k.lower(): v for k, v in headers.items()},
        body=body,
    )


def v3_headers(secret: str, method: str, uri: str, body: bytes, timestamp_ms: int) -> dict[str, str]:
    source = f"{method}{uri}".encode() + body + str(timestamp_ms).encode()
    digest = hmac.new(secret.encode(), source, hashlib.sha256).digest()
    return {
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": str(timestamp_ms),
    }


def provider(**options: Any) -> Any:
    return build_provider("hubspot", {"secret": SDK_SECRET} | options)


def test_sdk_v3_vector() -> None:
    headers = {"X-HubSpot-Signature-v3": SDK_V3, "X-HubSpot-Request-Timestamp": str(SDK_V3_TIMESTAMP_MS)}
    provider().verify(request(headers, body=SDK_BODY), SDK_V3_TIMESTAMP_MS / 1000)


def test_sdk_v2_vectors() -> None:
    hubspot = provider(versions=["v2"])
    headers = {"X-HubSpot-Signature-Version": "v2", "X-HubSpot-Signature": SDK_V2}
    hubspot.verify(request(headers, body=SDK_BODY), NOW_S)
    get_headers = {"X-HubSpot-Signature-Version": "v2", "X-HubSpot-Signature": SDK_V2_GET}
    hubspot.verify(request(get_headers, body=b"", method="GET"), NOW_S)


def test_sdk_and_doc_v1_vectors() -> None:
    hubspot = provider(versions=["v1"])
    hubspot.verify(
        request({"X-HubSpot-Signature-Version": "v1", "X-HubSpot-Signature": SDK_V1}, body=SDK_BODY), 0
    )
    verified = hubspot.verify(
        request({"X-HubSpot-Signature-Version": "v1", "X-HubSpot-Signature": DOC_V1}, body=DOC_V1_BODY), 0
    )
    assert hubspot.event_id(verified, hubspot.parse(verified)) == "62515:12345:1"


def test_only_configured_versions_are_accepted() -> None:
    v1 = {"X-HubSpot-Signature-Version": "v1", "X-HubSpot-Signature": SDK_V1}
    with pytest.raises(Unauthorized):
        provider().verify(request(v1, body=SDK_BODY), NOW_S)  # default: v3 only
    with pytest.raises(Unauthorized):
        provider(versions=["v2"]).verify(request(v1, body=SDK_BODY), NOW_S)
    provider(versions=["v3", "v1"]).verify(request(v1, body=SDK_BODY), NOW_S)


@pytest.mark.parametrize("versions", [["v3", "v1"], ["v1", "v3"]])
def test_v3_wrong_signature_is_not_rescued_by_a_legacy_one(versions: list[str]) -> None:
    """Whatever the order of `versions`: a request with a v3 signature is judged by it alone
    (v1 signs no timestamp, so a captured request would pass again)."""
    timestamp = int(NOW_S * 1000)
    legacy = {"X-HubSpot-Signature-Version": "v1", "X-HubSpot-Signature": SDK_V1}
    headers = v3_headers("wrong secret", "POST", SDK_URL, SDK_BODY, timestamp) | legacy
    with pytest.raises(Unauthorized):
        provider(versions=versions).verify(request(headers, body=SDK_BODY), NOW_S)
    replayed = v3_headers(SDK_SECRET, "POST", SDK_URL, SDK_BODY, timestamp) | legacy
    provider(versions=versions).verify(request(replayed, body=SDK_BODY), NOW_S)
    with pytest.raises(Unauthorized):  # the same request an hour later
        provider(versions=versions).verify(request(replayed, body=SDK_BODY), NOW_S + 3600)


def test_v3_signature_with_a_space_for_a_plus_is_taken_back() -> None:
    """A '+' of the base64 signature that arrives as a space (decoded as a form on the way)."""
    timestamp = int(NOW_S * 1000)
    for n in range(100):  # a body whose signature has a '+' inside (about half of them do)
        body = BODY.replace(b'"eventId":7', b'"eventId":%d' % n)
        headers = v3_headers(SDK_SECRET, "POST", SDK_URL, body, timestamp)
        if "+" in headers["X-HubSpot-Signature-v3"][1:-1]:
            break
    spaced = headers | {"X-HubSpot-Signature-v3": headers["X-HubSpot-Signature-v3"].replace("+", " ")}
    provider().verify(request(spaced, body=body), NOW_S)
    forged = v3_headers("wrong secret", "POST", SDK_URL, body, timestamp)
    with pytest.raises(Unauthorized):
        provider().verify(
            request(
                forged | {"X-HubSpot-Signature-v3": forged["X-HubSpot-Signature-v3"].replace("+", " ")},
                body=body,
            ),
            NOW_S,
        )


def test_a_client_secret_with_a_trailing_newline_verifies() -> None:
    timestamp = int(NOW_S * 1000)
    headers = v3_headers(SDK_SECRET, "POST", SDK_URL, BODY, timestamp)
    build_provider("hubspot", {"secret": SDK_SECRET + "\n"}).verify(request(headers), NOW_S)


def test_v3_timestamp_tolerance_both_ways() -> None:
    hubspot = provider()
    for offset_s in (-299, 299):
        timestamp = int((NOW_S + offset_s) * 1000)
        hubspot.verify(request(v3_headers(SDK_SECRET, "POST", SDK_URL, BODY, timestamp)), NOW_S)
    for offset_s in (-301, 301):
        timestamp = int((NOW_S + offset_s) * 1000)
        with pytest.raises(Unauthorized):
            hubspot.verify(request(v3_headers(SDK_SECRET, "POST", SDK_URL, BODY, timestamp)), NOW_S)


def test_v3_decodes_the_listed_characters_in_the_uri() -> None:
    assert decode_v3_uri("https://x.example/a%3Ab%2fc%3F%40%21%24%27%28%29%2A%2C%3B%20%2B") == (
        "https://x.example/a:b/c?@!$'()*,;%20%2B"
    )
    received = "https://leads.example.com/hooks/hubspot?filter=a%3Ab%2Cc&q=x%20y"
    signed_uri = "https://leads.example.com/hooks/hubspot?filter=a:b,c&q=x%20y"  # what HubSpot signs
    timestamp = int(NOW_S * 1000)
    provider().verify(
        request(v3_headers(SDK_SECRET, "POST", signed_uri, BODY, timestamp), url=received), NOW_S
    )


def test_public_url_is_what_hubspot_signed() -> None:
    """Behind a proxy the app sees http://10.0.0.7:8000/...; HubSpot signed the public URL."""
    public = "https://leads.example.com/hooks/hubspot"
    internal = "http://10.0.0.7:8000/hooks/hubspot"
    timestamp = int(NOW_S * 1000)
    headers = v3_headers(SDK_SECRET, "POST", public, BODY, timestamp)
    with pytest.raises(Unauthorized):
        provider().verify(request(headers, url=internal), NOW_S)
    provider(public_url=public).verify(request(headers, url=internal), NOW_S)
    # the request's query string is kept when public_url has none
    query_headers = v3_headers(SDK_SECRET, "POST", public + "?portal=62515", BODY, timestamp)
    provider(public_url=public).verify(request(query_headers, url=internal + "?portal=62515"), NOW_S)


def test_tls_ended_at_a_proxy_the_https_form_of_the_url_as_received_is_accepted() -> None:
    """HubSpot calls https://; where TLS ends at an ingress whose X-Forwarded-Proto uvicorn does
    not trust (FORWARDED_ALLOW_IPS unset), the app sees http:// with the same host and path. The
    scheme is all that is tried besides: another host, path or query is still refused."""
    public = "https://leads.example.com/hooks/hubspot?portal=62515"
    timestamp = int(NOW_S * 1000)
    v3 = v3_headers(SDK_SECRET, "POST", public, BODY, timestamp)
    provider().verify(request(v3, url=public.replace("https://", "http://")), NOW_S)
    for other in (
        "http://leads.example.org/hooks/hubspot?portal=62515",
        "http://leads.example.com/hooks/other?portal=62515",
        "http://leads.example.com/hooks/hubspot?portal=62516",
    ):
        with pytest.raises(Unauthorized):
            provider().verify(request(v3, url=other), NOW_S)
    # With public_url, that is the URI, and only that.
    with pytest.raises(Unauthorized):
        provider(public_url="http://leads.example.com/hooks/hubspot").verify(
            request(v3, url=public.replace("https://", "http://")), NOW_S
        )
    source = SDK_SECRET.encode() + b"POST" + public.encode() + BODY
    v2 = {"X-HubSpot-Signature-Version": "v2", "X-HubSpot-Signature": hashlib.sha256(source).hexdigest()}
    provider(versions=["v2"]).verify(request(v2, url=public.replace("https://", "http://")), NOW_S)


def test_public_url_must_be_absolute() -> None:
    for bad in ("/hooks/hubspot", "ftp://x.example/h", "leads.example.com/hooks"):
        with pytest.raises(ValidationError):
            provider(public_url=bad)
    with pytest.raises(ValidationError):
        provider(versions=[])
    with pytest.raises(ValidationError):
        provider(versions=["v4"])


def test_v2_uses_the_uri_exactly_as_called() -> None:
    uri = "https://leads.example.com/hooks/hubspot?a=%3A"
    source = SDK_SECRET.encode() + b"POST" + uri.encode() + BODY
    headers = {"X-HubSpot-Signature-Version": "v2", "X-HubSpot-Signature": hashlib.sha256(source).hexdigest()}
    provider(versions=["v2"]).verify(request(headers, url=uri), NOW_S)
    decoded = "https://leads.example.com/hooks/hubspot?a=:"
    with pytest.raises(Unauthorized):
        provider(versions=["v2"]).verify(request(headers, url=decoded), NOW_S)


def test_event_id_is_the_sorted_event_ids_or_a_hash() -> None:
    hubspot = provider()
    timestamp = int(NOW_S * 1000)
    cases = [
        (b'[{"eventId": 10}, {"eventId": 9}, {"eventId": 100}]', "::9,::10,::100"),
        (b'[{"eventId": "abc", "portalId": 33, "subscriptionId": 25}]', "33:25:abc"),
        (b'{"eventId": 5, "portalId": 33}', "33::5"),
        (b'[{"eventId": 1}, {"no": "id"}]', None),
        (b"[]", None),
        (b'[{"eventId": 1.5}]', None),
    ]
    for body, expected in cases:
        verified = hubspot.verify(
            request(v3_headers(SDK_SECRET, "POST", SDK_URL, body, timestamp), body=body), NOW_S
        )
        assert hubspot.event_id(verified, hubspot.parse(verified)) == (expected or body_hash(body))
    many = ("[" + ",".join(f'{{"eventId": {1_000_000 + i}}}' for i in range(100)) + "]").encode()
    verified = hubspot.verify(
        request(v3_headers(SDK_SECRET, "POST", SDK_URL, many, timestamp), body=many), NOW_S
    )
    assert hubspot.event_id(verified, hubspot.parse(verified)).startswith("sha256:")


def test_event_id_tells_apart_equal_event_ids_of_other_portals_or_subscriptions() -> None:
    # HubSpot: eventId "is not guaranteed to be unique". An app's one target URL receives every
    # installed portal's events, so the id also names the portal and the subscription (both
    # stable across retries); attemptNumber, which changes on each retry, is never part of it.
    hubspot = provider()
    timestamp = int(NOW_S * 1000)

    def event_id(*events: dict[str, Any]) -> str:
        body = json.dumps(list(events)).encode()
        verified = hubspot.verify(
            request(v3_headers(SDK_SECRET, "POST", SDK_URL, body, timestamp), body=body), NOW_S
        )
        return str(hubspot.event_id(verified, hubspot.parse(verified)))

    event = {"eventId": 3816279340, "subscriptionId": 25, "portalId": 33, "attemptNumber": 0, "objectId": 1}
    other_portal = event | {"portalId": 34, "objectId": 2}
    other_subscription = event | {"subscriptionId": 26, "objectId": 3}
    ids = {event_id(event), event_id(other_portal), event_id(other_subscription)}
    assert len(ids) == 3
    assert event_id(event) == event_id(event | {"attemptNumber": 1})
    assert event_id(event, other_portal) == event_id(other_portal | {"attemptNumber": 2}, event)
