"""`leadbridge mappings validate` and `leadbridge mappings test`: check mappings, dry-run one.

    validate(Path("mappings"), os.environ, sys.stdout)                 # exit code 0 / 1
    dry_run("website-contact", Path("payload.json"), {}, Path("mappings"), os.environ, sys.stdout)

`validate` prints every problem and warning on its own line (`file:line: field.path: message`),
then one `ok` line per mapping. `dry_run` parses the payload file the way the worker does (the
provider's `reparse`, content type from a `--header` or the file extension), plans it and prints
the Plan as JSON. It calls nothing: an `enrich` fetch is printed (header values and `${VAR}`
values redacted) instead of made, and the fetched record is null. No secrets reach the output.
With `--resolve` it reads (GET, nothing else) each command's table from the Connect API of
CONNECT_BASE_URL, and adds `requests`: the bodies the worker would send, with lead state and
custom field names resolved to ids; an unknown name is an error, as it would be on delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

from bridge.connect import bodies
from bridge.connect.client import ConnectClient, build_http_client
from bridge.connect.tables import TableCache
from bridge.errors import BridgeError, InboundError, MappingError, UpstreamError
from bridge.mapping.commands import LeadCommand
from bridge.mapping.compiled import CompiledMapping
from bridge.mapping.loader import load_all

CONTENT_TYPES = {
    ".json": "application/json",
    ".xml": "text/xml",
    ".form": "application/x-www-form-urlencoded",
    ".urlencoded": "application/x-www-form-urlencoded",
    ".txt": "text/plain",
}
_REDACTED = "***"
_MIN_REDACTED_LENGTH = 4  # shorter ${VAR} values (a region, a flag) are not secrets worth hiding


def guess_content_type(payload_file: Path) -> str:
    """The content type a payload file stands for, from its extension (JSON when unknown)."""
    return CONTENT_TYPES.get(payload_file.suffix.lower(), "application/json")


UNSET = "is not set and has no default"  # how a mapping's problem with an unset variable reads


def _problems(problems: Sequence[str], out: TextIO, unset_hint: str | None) -> None:
    for line in problems:
        out.write(f"error: {line}\n")
    if unset_hint and any(UNSET in line for line in problems):
        out.write(f"hint: {unset_hint}\n")


def validate(path: Path, environ: Mapping[str, str], out: TextIO, unset_hint: str | None = None) -> int:
    """Check every mapping at `path`; 0 when all are valid (warnings allowed), else 1.
    `unset_hint`: a line to add when a variable a mapping references is unset."""
    result = load_all(path, environ)
    _problems(result.problems, out, unset_hint)
    for line in result.warnings:
        out.write(f"warning: {line}\n")
    if result.problems:
        count = len(result.problems)
        out.write(f"{count} problem{'s' if count != 1 else ''} in {path}: fix them and run validate again\n")
        return 1
    for mapping in result.mappings:
        out.write(
            f"ok: {mapping.name} ({mapping.source_path}: {mapping.provider_name}, {mapping.action}, "
            f"table {mapping.table})\n"
        )
    count = len(result.mappings)
    out.write(f"{count} mapping{'s' if count != 1 else ''} valid\n")
    return 0


@dataclass(frozen=True)
class Upstream:
    """Where `--resolve` reads tables: the Connect API (or a sandbox) and its key."""

    base_url: str
    api_key: str
    transport: httpx.AsyncBaseTransport | None = None  # tests: an in-process sandbox


def dry_run(
    name: str,
    payload_file: Path,
    headers: dict[str, str],
    mappings_path: Path,
    environ: Mapping[str, str],
    out: TextIO,
    resolve: Upstream | None = None,
    unset_hint: str | None = None,
) -> int:
    """Plan one payload with mapping `name` and print the Plan as JSON; calls nothing. With
    `resolve`, also read each command's table (GET only) and print the request bodies the
    worker would send, names resolved to ids; an unknown state or custom field is an error.
    `name` "" with `mappings_path` a file: that file's mapping."""
    result = load_all(mappings_path, environ)
    if not name and mappings_path.is_file() and len(result.mappings) == 1:
        name = result.mappings[0].name
    mapping = next((m for m in result.mappings if m.name == name), None)
    if mapping is None:
        _problems(result.problems, out, unset_hint)
        if not name:
            out.write(f"error: {mappings_path} holds no valid mapping\n")
            return 1
        known = ", ".join(m.name for m in result.mappings) or "none"
        out.write(f"error: no valid mapping named {name!r} in {mappings_path} (valid: {known})\n")
        return 1
    try:
        body = payload_file.read_bytes()
    except OSError as exc:
        out.write(f"error: cannot read {payload_file}: {exc.strerror or type(exc).__name__}\n")
        return 1
    request_headers = {key.lower(): value for key, value in headers.items()}
    request_headers.setdefault("content-type", guess_content_type(payload_file))
    try:
        payload = mapping.provider.reparse(body, request_headers)
    except InboundError as exc:
        out.write(
            f"error: {payload_file} does not parse for provider {mapping.provider_name}: {exc.reason}\n"
        )
        return 1
    fetcher = _PrintingFetcher(mapping, out)
    try:
        shown = _run(_plan(mapping, payload, fetcher, resolve))
    except MappingError as exc:
        out.write(f"error: mapping {name}: {exc.message}\n")
        return 1
    except UpstreamError as exc:
        out.write(f"error: --resolve: cannot read the table: {exc}\n")
        return 1
    except BridgeError as exc:
        out.write(f"error: mapping {name}: {type(exc).__name__}\n")
        return 1
    out.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def _plan(
    mapping: CompiledMapping, payload: Any, fetcher: _PrintingFetcher, resolve: Upstream | None
) -> dict[str, Any]:
    plan = await mapping.plan(payload, enrich=fetcher)
    shown: dict[str, Any] = plan.model_dump(mode="json")
    if resolve is None:
        return shown
    client = build_http_client(timeout_s=10.0, max_connections=4, transport=resolve.transport, pool="httpx")
    async with client as http:
        tables = TableCache(ConnectClient(http, resolve.base_url, resolve.api_key).get_table, ttl_s=60.0)
        shown["requests"] = [await _requests(command, tables) for command in plan.commands]
    return shown


async def _requests(command: LeadCommand, tables: TableCache) -> dict[str, Any]:
    """What the worker sends for `command`: a create, a merge patch, or (upsert) either one,
    depending on whether its record is linked to an entry yet."""
    requests: dict[str, Any] = {"index": command.index}
    if command.action in ("create", "upsert"):
        requests["create"] = {"POST /connect/table_entries": await bodies.create_body(command, tables)}
        later = bodies.after_create(command)
        if later:
            requests["create"]["then PATCH /connect/table_entries/{id}"] = later
    if command.action in ("patch", "upsert"):
        requests["patch"] = (
            {"PATCH /connect/table_entries/{id}": await bodies.patch_body(command, tables)}
            if not command.is_empty_patch()
            else "nothing to send"
        )
    return requests


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


class _PrintingFetcher:
    """Prints the GET an enrich step would make (secrets redacted) and gives null."""

    def __init__(self, mapping: CompiledMapping, out: TextIO) -> None:
        self._out = out
        self._secrets = sorted(
            (
                (value, f"${{{name}}}")
                for name, value in mapping.env_values.items()
                if len(value) >= _MIN_REDACTED_LENGTH
            ),
            key=lambda item: -len(item[0]),
        )

    async def __call__(self, url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        for value, placeholder in self._secrets:
            url = url.replace(value, placeholder)
        shown = ", ".join(f"{key}: {_REDACTED}" for key in headers)
        self._out.write(
            f"enrich: would GET {url}" + (f" ({shown})" if shown else "") + " (not fetched: null)\n"
        )
        return None
