"""The named transforms a value's `then:` applies, and the value conversions they share.

Every transform takes one JSON value and gives one; a value it cannot convert gives None (the
value's `default` and `required` then apply), never an exception. None stays None.

| name | does |
|---|---|
| trim, lower, upper, title | string case and whitespace; other values unchanged |
| empty_to_null | "" (or only whitespace and invisible characters), [] and {} become null |
| string | text; numbers without a needless ".0", booleans as true/false, lists/objects as JSON |
| number | int or float, from text too ("5,000.50", "5.000,50", "$ 300"); integral values as int |
| integer | like number, but only integral values (1.5 gives null) |
| boolean | true/false, 1/0, and text yes/no, y/n, true/false, on/off, 1/0, checked/unchecked |
| email | trim + lower + NFC (drop a `mailto:`, invisible characters, <…>); not an address gives null |
| phone_e164 | E.164 text via phonenumbers (options below); an extension is dropped |
| datetime | ISO-8601 UTC with `Z`; in: epoch s or ms, ISO-8601, RFC 2822, common dates |

Options, written as a one-key object in `then:`:
`{phone_e164: {region: DE}}` reads numbers without a country code as German; `strict: false`
keeps numbers that are merely possible (not known valid). `{datetime: {format: "%d.%m.%Y",
tz: Europe/Berlin}}` accepts only that strptime format; `tz` is the zone of inputs without one.
`{number: {decimal: ","}}` (or `integer`) reads text with that decimal sign, the other one only
grouping thousands: "1.500" is 1500.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.providers.bodies import JSON_INTEGERS

Transform = Callable[[Any], Any]

TRANSFORM_NAMES = (
    "trim",
    "lower",
    "upper",
    "title",
    "empty_to_null",
    "string",
    "number",
    "integer",
    "boolean",
    "email",
    "phone_e164",
    "datetime",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A domain label: any letter or digit (IDN too), "-" and "_", no other ASCII punctuation. A
# local part: anything but the characters only a quoted local part may hold.
_LABEL = r"[^\s!-,./:-@\[-^`{-~]"
_EMAIL = re.compile(rf"^[^@\s\"(),:;<>\[\\\]]+@(?:{_LABEL}+\.)+{_LABEL}{{2,}}$")
_NAME_ADDR = re.compile(r"^[^<>]*<([^<>]*)>$")  # "Jane Doe <jane@example.com>"
# Invisible characters that come along with pasted text and are never part of an address:
# zero-width space, word joiner, BOM, and the direction marks and embeddings of RTL interfaces.
_INVISIBLE_CHARS = "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
_INVISIBLE_SET = frozenset(_INVISIBLE_CHARS)
_BLANK_EDGES = re.compile(f"^[\\s{_INVISIBLE_CHARS}]+|[\\s{_INVISIBLE_CHARS}]+$")
_NUMERIC = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
# Digits grouped by thousands: the first group starts with 1-9 ("0,125" is a decimal comma).
_THOUSANDS_COMMA = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+$")
_THOUSANDS_DOTS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:\.\d{3}){2,}$")  # 1.234.567; one dot: a decimal point
# Digits grouped by thousands with this sign (and nothing after): for `number`'s `decimal` option.
_THOUSANDS = {",": _THOUSANDS_COMMA, ".": re.compile(r"^[+-]?[1-9]\d{0,2}(?:\.\d{3})+$")}
# Spaces of any kind (fr writes a narrow no-break space), "_" and de-CH's apostrophes.
_DIGIT_GROUPING = re.compile(r"[\s_'\u2019]")
# A word for `title`: letters and digits, with an English contraction's ending ("jane's",
# "don't") as part of it; "o'brien" is two words, "1st" one. A combining accent belongs to the
# letter before it (decomposed text: "c" + U+0327 is "ç", not the end of a word).
_MARKS = "\u0300-\u036f\u0483-\u0489\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_TITLE_APART = re.compile(f"['\u2019\\d{_MARKS}]")  # where `title` and str.title differ
_TITLE_WORD = re.compile(
    f"[^\\W_](?:[^\\W_]|[{_MARKS}])*(?:['\u2019](?:s|t|d|m|ll|re|ve)(?![^\\W_]))?", re.IGNORECASE
)
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")
# JavaScript's Date#toString ends "GMT+0200 (Central European Summer Time)"; parsedate reads
# "GMT" and drops the offset after it, so the offset is made a plain "+0200".
_GMT_OFFSET = re.compile(r"\s*(?:GMT|UTC)([+-]\d{2}):?(\d{2})(?:\s*\([^()]*\))?$", re.IGNORECASE)
# A zone name after the time: "… UTC" (Ruby's Time#to_s) is UTC, whatever the `tz` option; after
# an offset ("… +0200 CEST", Go's time.Time) it adds nothing. Other names alone stay unread.
_UTC_NAME = re.compile(r"\s+(?:UTC|GMT)$", re.IGNORECASE)
_NAME_AFTER_OFFSET = re.compile(r"(\s*[+-]\d{2}:?\d{2})\s+[A-Za-z]{2,5}$")
# "12:15:00.5 +0200": Python 3.11's fromisoformat takes a space before the offset only after a
# fraction of six digits (or none).
_SPACED_OFFSET = re.compile(r"(\d:\d{2}(?:[.,]\d+)?)\s+([+-]\d{2}(?::?\d{2})?)$")
# What parsedate reads besides numbers: day and month names, the zones it knows (any other zone
# name, and AM/PM, it silently drops, so the time would be read in `tz` or twelve hours off).
_DAY_AND_MONTH_NAMES = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_PARSEDATE_NAMES = frozenset(_DAY_AND_MONTH_NAMES + tuple(name[:3] for name in _DAY_AND_MONTH_NAMES))
_PARSEDATE_ZONES = frozenset(
    {"ut", "utc", "gmt", "z", "ast", "adt", "est", "edt", "cst", "cdt", "mst", "mdt", "pst", "pdt"}
)
_WORD = re.compile(r"[A-Za-z]+")
# RFC 2822's "+0200 (CEST)": a comment after the offset, which it only names. After no offset
# ("1:05 PM (EDT)") it is kept, and refused as a word: read in `tz`, the time would be off.
_COMMENT = re.compile(r"(?:(?<=[+-]\d{4})|(?<=[+-]\d\d:\d\d)|(?<=GMT)|(?<=UTC))\s*\([^()]*\)$")
_MERIDIEM = re.compile(r"\s*(?<![A-Za-z])([ap])\.?m\.?$", re.IGNORECASE)
# The day of the week before its comma, which parsedate skips unread whatever it says ("Tues,",
# AP style's "Thurs.,"): no word that would move the time.
_SKIPPED_DAY = re.compile(r"^[A-Za-z]+\.?,")
_CURRENCY_SIGNS = "$€£¥₹"
_CURRENCY = " \t" + _CURRENCY_SIGNS
# An ISO 4217 code before or after the amount ("USD 1,234.50", "1.234,50 EUR", "CHF1'200"), as
# payment fields and CRMs' currency properties write it.
_CURRENCY_CODE = re.compile(
    rf"^[A-Z]{{3}}(?=[\s\d{re.escape(_CURRENCY_SIGNS)}.,+-])|(?<=[\s\d.,])[A-Z]{{3}}$"
)
_TRUE = frozenset({"true", "yes", "y", "1", "on", "checked"})
_FALSE = frozenset({"false", "no", "n", "0", "off", "unchecked"})
_DATE_FORMATS = (
    "%Y/%m/%d",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%d.%m.%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%m/%d/%Y",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M %p",
    "%d-%m-%Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%d %B %Y",
    "%d %b %Y",
)


class PhoneOptions(BaseModel):
    """`{phone_e164: {region: DE, strict: true}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = Field(
        default=None, description="ISO 3166 region for numbers written without a country code, e.g. DE"
    )
    strict: bool = Field(
        default=True, description="true: only numbers valid for their region; false: any possible number"
    )

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # "": none (`region: "${PHONE_REGION:-}"` with the variable unset)
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {value!r} (use an ISO 3166 code such as DE or US)")
        return region


class NumberOptions(BaseModel):
    """`{number: {decimal: ","}}` (and the same for `integer`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decimal: Literal[".", ","] = Field(
        description='the decimal sign of the source: "," reads 1.500 as 1500 and 12,5 as 12.5; '
        '"." reads 1,500 as 1500 and 1.500 as 1.5; the other sign then only groups thousands'
    )


class DatetimeOptions(BaseModel):
    """`{datetime: {format: "%d.%m.%Y %H:%M", tz: Europe/Berlin}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str | None = Field(default=None, description="strptime format; only this format is accepted")
    tz: str | None = Field(
        default=None, description="IANA time zone of inputs without an offset (default UTC)"
    )

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone_of(value)
        return value


def zone_of(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


OPTION_MODELS: dict[str, type[BaseModel]] = {
    "phone_e164": PhoneOptions,
    "datetime": DatetimeOptions,
    "number": NumberOptions,
    "integer": NumberOptions,
}


def build_transform(name: str, options: BaseModel | None = None) -> Transform:
    """The function for a transform name (validated at load) and its options."""
    if name == "phone_e164":
        phone = options if isinstance(options, PhoneOptions) else PhoneOptions()
        return lambda value: to_phone_e164(value, phone.region, phone.strict)
    if name in ("number", "integer") and isinstance(options, NumberOptions):
        decimal, read = options.decimal, to_number if name == "number" else to_integer
        return lambda value: read(value, decimal)
    if name == "datetime":
        when = options if isinstance(options, DatetimeOptions) else DatetimeOptions()
        zone = zone_of(when.tz) if when.tz else UTC
        fmt = when.format
        return lambda value: format_datetime(parse_datetime(value, fmt=fmt, zone=zone))
    return _SIMPLE[name]


# --- text ---------------------------------------------------------------------------------------


def _text(method: Callable[[str], str]) -> Transform:
    def apply(value: Any) -> Any:
        return method(value) if isinstance(value, str) else value

    return apply


def title(text: str) -> str:
    """Each word capitalised, the rest lower-cased. Unlike str.title, not after an apostrophe
    that starts a contraction's ending ("Jane's", not "Jane'S"), and a word that starts with a
    digit is left as written ("1st", "3M"; not "1St")."""
    if not _TITLE_APART.search(text):
        return text.title()  # no apostrophe, no digit: the same, and faster
    return _TITLE_WORD.sub(_title_word, text)


def _title_word(match: re.Match[str]) -> str:
    word = match[0]
    return word if word[0].isdigit() else word[0].title() + word[1:].lower()


def trim(text: str) -> str:
    """Without surrounding whitespace nor the invisible characters that come with pasted text."""
    text = text.strip()
    if text and (text[0] in _INVISIBLE_SET or text[-1] in _INVISIBLE_SET):
        return _BLANK_EDGES.sub("", text)
    return text


def empty_to_null(value: Any) -> Any:
    if isinstance(value, str):
        return value if trim(value) else None
    if isinstance(value, list | dict) and not value:
        return None
    return value


def stringify(value: Any) -> str | None:
    """Text for a key, a template part or `string`: 5.0 -> '5', True -> 'true', None -> None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


# --- numbers ------------------------------------------------------------------------------------


def to_number(value: Any, decimal: str | None = None) -> int | float | None:
    """A number from a JSON number or from text. `decimal` ("." or ","): the source's decimal
    sign, so the other one only groups digits by thousands; None: told apart as documented
    (docs/mappings.md), where a single "." is always a decimal point."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value in JSON_INTEGERS else _float_of(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if not isinstance(value, str):
        return None
    text = trim(value)  # an RTL form's direction marks around the amount too
    if text[-1:].isalpha() or text[:1].isalpha():
        text = _CURRENCY_CODE.sub("", text, count=1)
    text = _DIGIT_GROUPING.sub("", text.strip(_CURRENCY))
    if decimal is not None:
        whole, point, fraction = text.partition(decimal)
        grouping = "," if decimal == "." else "."
        if grouping in fraction or decimal in fraction:
            return None  # 5,000.50 read with a decimal comma: not a number of that locale
        if grouping in whole:
            if not _THOUSANDS[grouping].match(whole):
                return None  # 1.50 with a decimal comma: no thousands there
            whole = whole.replace(grouping, "")
        text = f"{whole}.{fraction}" if point else whole
    elif "," in text:
        if "." in text:
            # the later separator is the decimal one: 5,000.50 or 5.000,50
            if text.rfind(",") > text.rfind("."):
                text = text.replace(".", "").replace(",", ".")
            else:
                text = text.replace(",", "")
        elif _THOUSANDS_COMMA.match(text):
            text = text.replace(",", "")
        else:
            text = text.replace(",", ".")
    elif _THOUSANDS_DOTS.match(text):
        text = text.replace(".", "")
    if not _NUMERIC.match(text):
        return None
    if "." not in text and "e" not in text.lower() and len(text) <= 40:
        return to_number(int(text))  # a longer one could pass int()'s 4300-digit limit
    return to_number(float(text))


def _float_of(value: int) -> float | None:
    """An integer past 64 bits as the float a JSON body's own such number parses to."""
    try:
        return float(value)
    except OverflowError:
        return None


def to_integer(value: Any, decimal: str | None = None) -> int | None:
    number = to_number(value, decimal)
    if isinstance(number, float):
        return None  # to_number already gave int for integral floats
    return number


def to_boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = trim(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


# --- contact ------------------------------------------------------------------------------------


def to_email(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    # NFC: "josé" typed on one system arrives as é, on another as e + a combining accent; both
    # are one address (RFC 6530 §10.1), and one key, so one lead.
    text = unicodedata.normalize("NFC", _INVISIBLE.sub("", value).strip().lower())
    if text.startswith("mailto:"):
        text = text[len("mailto:") :].partition("?")[0].strip()  # ?subject=…: not the address
    if bracketed := _NAME_ADDR.match(text):
        text = bracketed.group(1).strip()
    text = text.rstrip(".,;")  # a sentence's end; "example.com." is example.com
    return text if _EMAIL.match(text) else None


def to_phone_e164(value: Any, region: str | None = None, strict: bool = True) -> str | None:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # a number field some systems send as 4155552671.0 (E.164: 15 digits)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    return _phone_e164(value, region, strict)


@functools.lru_cache(maxsize=4096)
def _phone_e164(value: str, region: str | None, strict: bool) -> str | None:
    """Parsing costs ~20 µs; the same contact's number recurs (upserts, retries), so keep results."""
    text = value.strip()
    if not text:
        return None
    if region is None and text.startswith("00"):
        text = "+" + text[2:]
    number = _phone_number(text, region, strict)
    if number is None and region is not None and text.startswith("00"):
        # "00" + country code, as most of the world writes it, where the region's own
        # international prefix is another (US 011, AU 0011, JP 010)
        number = _phone_number("+" + text[2:], None, strict)
    if number is None:
        return None
    result: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return result


def _phone_number(text: str, region: str | None, strict: bool) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    ok = phonenumbers.is_valid_number(number) if strict else phonenumbers.is_possible_number(number)
    return number if ok else None


# --- time ---------------------------------------------------------------------------------------


def parse_datetime(value: Any, *, fmt: str | None = None, zone: tzinfo = UTC) -> datetime | None:
    """An aware datetime from epoch seconds/ms (number or numeric text) or date text; else None."""
    try:
        return _parse_datetime(value, fmt, zone)
    except (ValueError, TypeError, OverflowError, OSError, IndexError):
        return None


def _parse_datetime(value: Any, fmt: str | None, zone: tzinfo) -> datetime | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_epoch(value)
    if not isinstance(value, str):
        return None
    text = trim(value)
    if not text:
        return None
    if fmt is not None:
        return _aware(datetime.strptime(text, fmt), zone)
    if _NUMERIC.match(text):
        return _from_epoch(float(text))
    moment = _from_iso(text, zone)
    if moment is not None:
        return moment
    text = _GMT_OFFSET.sub(r" \1\2", text)
    text = _NAME_AFTER_OFFSET.sub(r"\1", text)
    if _UTC_NAME.search(text):
        text, zone = _UTC_NAME.sub("", text), UTC
    moment = _from_iso(text, zone)
    if moment is not None:
        return moment
    for candidate in _DATE_FORMATS:
        try:
            return _aware(datetime.strptime(text, candidate), zone)
        except ValueError:
            continue
    return _from_rfc_2822(text, zone)


def _from_rfc_2822(text: str, zone: tzinfo) -> datetime | None:
    """RFC 2822 and the like ("July 1, 2025 3:05 PM", Unix `date`), or None when the text has
    a word parsedate would drop (a zone name it does not know) rather than a time it would shift."""
    text = _COMMENT.sub("", text)
    meridiem = _MERIDIEM.search(text)
    if meridiem:
        text = text[: meridiem.start()]
    moment = parsedate_to_datetime(text)
    names = _PARSEDATE_NAMES if moment.tzinfo is None else _PARSEDATE_NAMES | _PARSEDATE_ZONES
    if any(word.lower() not in names for word in _WORD.findall(_SKIPPED_DAY.sub("", text, count=1))):
        return None
    if meridiem:
        pm = meridiem[1].lower() == "p"
        if 1 <= moment.hour <= 12:
            moment = moment.replace(hour=moment.hour % 12 + (12 if pm else 0))
        elif not (moment.hour > 12 and pm) and not (moment.hour == 0 and not pm):
            # A 24-hour time with its own AM/PM ("13:05 PM", "00:30 AM": a formatter's "HH ... a")
            # means what it says; one that contradicts it ("13:05 AM", a date alone "PM") is null.
            return None
    if moment.tzinfo is None and text.endswith("-0000"):
        return moment.replace(tzinfo=UTC)  # RFC 2822 §3.3: UTC, the sender's own zone unknown
    return _aware(moment, zone)


def _from_iso(text: str, zone: tzinfo) -> datetime | None:
    text = _LONG_FRACTION.sub(r"\1", text)
    try:
        return _aware(datetime.fromisoformat(text), zone)
    except ValueError:
        pass
    joined = _SPACED_OFFSET.sub(r"\1\2", text)
    if joined == text:
        return None
    try:
        return _aware(datetime.fromisoformat(joined), zone)
    except ValueError:
        return None


def _from_epoch(number: float) -> datetime | None:
    if not math.isfinite(number):
        return None
    magnitude = abs(number)
    if magnitude >= 1e14:  # microseconds
        seconds = number / 1e6
    elif magnitude >= 1e11:  # milliseconds (from 1973 on)
        seconds = number / 1e3
    else:
        seconds = number
    return _EPOCH + timedelta(seconds=seconds)


def _aware(moment: datetime, zone: tzinfo) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def format_datetime(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with a `Z`: 2025-07-01T10:00:00Z (milliseconds only when not zero)."""
    if moment is None:
        return None
    # strftime's %Y does not pad years before 1000 to four digits (glibc): "202-07-01"
    text = f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"
    millis = moment.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else text + "Z"


def epoch_ms_text(value: Any) -> str | None:
    """An ordering value as decimal epoch milliseconds ('1719828000000'); None if unparseable."""
    moment = parse_datetime(value)
    if moment is None:
        return None
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    whole, rest = divmod(abs(micros), 1000)
    return f"{sign}{whole}" if rest == 0 else f"{sign}{whole}.{rest:03d}".rstrip("0")


_SIMPLE: dict[str, Transform] = {
    "trim": _text(trim),
    "lower": _text(str.lower),
    "upper": _text(str.upper),
    "title": _text(title),
    "empty_to_null": empty_to_null,
    "string": stringify,
    "number": to_number,
    "integer": to_integer,
    "boolean": to_boolean,
    "email": to_email,
}
