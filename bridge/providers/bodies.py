"""Body parsers shared by providers. Each failure is an InvalidBody (400), never a crash.

    parse_json        JSON, nesting bounded to MAX_JSON_DEPTH levels
    parse_urlencoded  application/x-www-form-urlencoded -> {name: str | [str, ...]}
    parse_multipart   multipart/form-data               -> {name: str | [str, ...]}
    parse_body        one of the above, chosen by the Content-Type header
    decode_json_fields  form fields that carry a JSON string (Jotform's rawRequest) -> objects
    parse_xml         XML through defusedxml: DTDs, entities and external references refused

Form bodies are bounded in fields, field size and name size; multipart also in part headers.
A repeated field gives a list of its values in order. File parts of a multipart body are
skipped (a lead is text; uploads are not stored).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from bridge.errors import InvalidBody, UnsupportedMediaType

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

MAX_JSON_DEPTH = 64
MAX_FORM_FIELDS = 1000
MAX_FIELD_BYTES = 256 * 1024
MAX_FIELD_NAME_BYTES = 1024
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_PART_HEADERS = 16
MAX_XML_DEPTH = 32

FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"


def parse_json(body: bytes) -> Any:
    """Parse a JSON body; nesting deeper than MAX_JSON_DEPTH levels is refused. A lone UTF-16
    surrogate escape in a string becomes U+FFFD (see `_parse_with_lone_surrogates`)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = _parse_with_lone_surrogates(body)
    except RecursionError:
        raise InvalidBody("body is not valid JSON") from None
    # A body with no more than MAX_JSON_DEPTH brackets cannot be nested deeper: skip the walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidBody(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# A \uXXXX escape of a UTF-16 surrogate (D800-DFFF).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# The integers orjson reads and writes (request bodies too): signed and unsigned 64-bit.
JSON_INTEGERS = range(-(2**63), 2**64)


def _parse_with_lone_surrogates(body: bytes) -> Any:
    """JSON that orjson refuses only for a lone surrogate escape: `"\\ud83d"`, half of an emoji,
    is valid JSON, and what JavaScript's JSON.stringify writes for a string cut inside a
    surrogate pair (a form field's maxlength counts UTF-16 units). Refusing it would lose the
    lead: the provider's retries carry the same body. The standard library parses it, with what
    orjson refuses otherwise still refused (NaN and Infinity, integers past 64 bits), and each
    lone surrogate becomes U+FFFD, so that the lead's values can be written as JSON again."""
    if not _SURROGATE_ESCAPE.search(body):
        raise InvalidBody("body is not valid JSON")
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except (ValueError, RecursionError):
        raise InvalidBody("body is not valid JSON") from None
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidBody(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return _without_lone_surrogates(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    value = int(text)
    if value not in JSON_INTEGERS:
        raise ValueError("integer out of range")
    return value


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Is any container nested more than `limit` levels deep? Iterative, stops early."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _charset(params: dict[bytes, bytes]) -> str:
    """The body's declared charset (default UTF-8); an unknown one is a 400, and so is one of
    Python's codecs that is no text encoding (base64, hex, zlib, ...: `bytes.decode` refuses them)."""
    name = params.get(b"charset", b"utf-8").decode("latin-1").strip().strip('"') or "utf-8"
    try:
        codec = codecs.lookup(name)
    except LookupError:
        raise InvalidBody("unknown charset") from None
    # What bytes.decode checks (a codec's own flag since Python 3.4), before it raises LookupError.
    if not getattr(codec, "_is_text_encoding", True):
        raise InvalidBody("unknown charset")
    return codec.name


def _collect(pairs: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Field pairs to an object; a repeated name gives a list of its values in order."""
    fields: dict[str, str | list[str]] = {}
    for name, value in pairs:
        if name not in fields:
            fields[name] = value
            continue
        existing = fields[name]
        if isinstance(existing, list):
            existing.append(value)
        else:
            fields[name] = [existing, value]
    return fields


def parse_urlencoded(body: bytes, content_type: str = FORM_URLENCODED) -> dict[str, str | list[str]]:
    """An `application/x-www-form-urlencoded` body as {name: value or [values]}."""
    _, params = parse_options_header(content_type)
    charset = _charset(params)
    try:
        text = body.decode(charset)
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding=charset,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeError, ValueError):
        raise InvalidBody("body is not a valid form") from None
    for name, value in pairs:
        if len(name.encode()) > MAX_FIELD_NAME_BYTES or len(value.encode()) > MAX_FIELD_BYTES:
            raise InvalidBody("form field too large")
    return _collect(pairs)


class _MultipartCollector:
    """Callbacks for python-multipart's streaming parser, enforcing our bounds as it goes."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.pairs: list[tuple[str, str]] = []
        self.parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._data = bytearray()
        self._name: str | None = None
        self._is_file = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_FIELDS:
            raise InvalidBody("too many form parts")
        self._headers = {}
        self._header_bytes = 0
        self._data = bytearray()
        self._name = None
        self._is_file = False

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidBody("form part headers too large")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise InvalidBody("too many form part headers")
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidBody("form part without a field name")
        raw_name = options[b"name"]
        if len(raw_name) > MAX_FIELD_NAME_BYTES:
            raise InvalidBody("form field name too large")
        self._name = self._decode(raw_name)
        self._is_file = b"filename" in options

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            raise InvalidBody("form field too large")

    def on_part_end(self) -> None:
        if self._name is None:
            raise InvalidBody("form part without headers")
        if not self._is_file:
            self.pairs.append((self._name, self._decode(bytes(self._data))))

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except UnicodeError:
            raise InvalidBody("form field is not valid text") from None


def parse_multipart(body: bytes, content_type: str) -> dict[str, str | list[str]]:
    """A `multipart/form-data` body as {name: value or [values]}; file parts are skipped."""
    media_type, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"")
    if media_type != MULTIPART.encode() or not boundary or len(boundary) > 70:
        raise InvalidBody("multipart body without a valid boundary")
    collector = _MultipartCollector(_charset(params))
    try:
        parser = MultipartParser(
            boundary,
            collector.callbacks(),  # type: ignore[arg-type]
            max_header_count=MAX_PART_HEADERS,
            max_header_size=MAX_PART_HEADER_BYTES,
        )
        parser.write(body)
        parser.finalize()
    except InvalidBody:
        raise
    except Exception:  # python-multipart raises several types (and ValueError) on bad input
        raise InvalidBody("body is not a valid multipart form") from None
    if parser.state != MultipartState.END:
        raise InvalidBody("multipart body ends before its closing boundary")
    return _collect(collector.pairs)


def parse_body(body: bytes, content_type: str) -> Any:
    """JSON, urlencoded or multipart, chosen by the Content-Type header (415 for others)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == FORM_URLENCODED:
        return parse_urlencoded(body, content_type)
    if media_type == MULTIPART:
        return parse_multipart(body, content_type)
    if media_type in ("", JSON) or (media_type.startswith("application/") and media_type.endswith("+json")):
        return parse_json(body)
    raise UnsupportedMediaType()


def decode_json_fields(fields: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Replace the named form fields' JSON strings by the values they encode (400 if invalid)."""
    decoded = dict(fields)
    for name in names:
        value = decoded.get(name)
        if isinstance(value, str):
            decoded[name] = parse_json(value.encode())
        elif value is not None:
            raise InvalidBody(f"form field {name!r} is repeated")
    return decoded


def parse_xml(body: bytes) -> Element:
    """The root element of an XML body. DTDs, entities and external references are refused
    (no XXE, no entity expansion), and so is nesting deeper than MAX_XML_DEPTH."""
    # Imported here: only the providers with XML bodies load the XML stack (resident memory).
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring as defused_fromstring

    try:
        root: Element = defused_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError, UnicodeError, LookupError):
        raise InvalidBody("body is not valid XML") from None
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > MAX_XML_DEPTH:
            raise InvalidBody(f"XML nested deeper than {MAX_XML_DEPTH} levels")
        stack.extend((child, depth + 1) for child in element)
    return root
