"""Edge cases of the mapping engine found by the mapping audit: YAML merge keys and non-text keys,
problem locations, state and custom field names a pool has twice, transforms on invisible
characters and RFC 2822's `-0000`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.connect.tables import MIN_REFRESH_S, TableCache
from bridge.errors import MappingError
from bridge.mapping.loader import load_all
from bridge.mapping.transforms import format_datetime, parse_datetime, to_boolean, to_number
from tests.servers import until
from tests.test_mapping_load import write
from tests.test_mapping_plan import run_sync

HEAD = """\
version: 1
name: m
provider: none
verify: {insecure: true}
table: t1
action: upsert
key: {path: email, then: [email]}
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, "m.yaml", text)
    return [line.replace(str(path), "{file}") for line in load_all(path, {}).problems]


def data_of(tmp_path: Path, text: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The first command's `data` that the mapping file `text` (which must load without a
    problem) makes from `payload`."""
    result = load_all(write(tmp_path, "m.yaml", text), {})
    assert result.problems == []
    (mapping,) = result.mappings
    data: dict[str, Any] = run_sync(mapping.plan(payload)).commands[0].data
    return data


# --- YAML ------------------------------------------------------------------------------------------


def test_a_merge_key_is_overridden_by_the_mappings_own_key(tmp_path: Path) -> None:
    """docs/mappings.md: "YAML anchors and merge keys (`<<: *defaults`) work". A key of the
    mapping itself overrides the merged one (YAML's merge key type); it was refused as a duplicate."""
    text = HEAD + (
        "lead:\n"
        "  data:\n"
        "    email: &contact {path: email, then: [email], required: true}\n"
        "    backup_email: &backup\n"
        "      <<: *contact\n"
        "      path: backup\n"
        "      required: false\n"
        "    other_email: *backup\n"  # the merged mapping again, through an alias
    )
    assert data_of(tmp_path, text, {"email": "A@Example.com", "backup": "B@Example.com"}) == {
        "email": "a@example.com",
        "backup_email": "b@example.com",
        "other_email": "b@example.com",
    }
    # a key written twice in the mapping itself is still a duplicate
    twice = HEAD + "lead:\n  data:\n    email:\n      <<: *c\n      path: a\n      path: b\n"
    twice = twice.replace("key: {path: email", "key: &c {path: email")
    assert problems_of(tmp_path, twice) == ["{file}:13: lead.data.email.path: duplicate key 'path'"]


def test_a_merged_mapping_keeps_its_own_overrides_of_what_it_merged(tmp_path: Path) -> None:
    """A template built on a template (`<<: *lowered`, where `lowered` merges `text` and overrides
    its `then`): YAML's merge gives `lowered` as it resolves, its own `then` included. The
    flattened pairs were taken first-wins, so `text`'s `then` came back and the e-mail went
    unlowered, with no problem reported (before the override change, a duplicate key)."""
    text = HEAD + (
        "lead:\n"
        "  data:\n"
        "    email: &text {path: email, then: [trim]}\n"
        "    work_email: &lowered\n"
        "      <<: *text\n"
        "      then: [trim, lower]\n"
        "    home_email:\n"
        "      <<: *lowered\n"
        "      path: home\n"
        "    other_email:\n"
        "      <<: [*text, *lowered]\n"  # the first mapping listed wins: `text`'s then
        "      path: home\n"
    )
    assert data_of(tmp_path, text, {"email": "A@Example.com", "home": "B@Example.com"}) == {
        "email": "A@Example.com",
        "work_email": "a@example.com",
        "home_email": "b@example.com",
        "other_email": "B@Example.com",
    }


def test_a_mapping_that_merges_itself_is_a_problem(tmp_path: Path) -> None:
    """A recursive alias raised RecursionError out of the loader (a reload's watch task died)."""
    for body in ("  data: &d {email: email, <<: *d}\n", "  data: &d {email: email, more: *d}\n"):
        (problem,) = problems_of(tmp_path, HEAD + "lead:\n" + body)
        assert "(yaml)" in problem, problem


def test_a_missing_section_is_named_in_the_problem(tmp_path: Path) -> None:
    """A provider's required option without any `verify:` was reported as `secret:`, not
    `verify.secret:` (the missing parent dropped from the field path)."""
    text = "version: 1\nname: m\nprovider: typeform\ntable: t1\naction: create\n"
    assert problems_of(tmp_path, text) == ["{file}:1: verify.secret: required key is missing"]


@pytest.mark.parametrize("name", ["on", "yes", "1"])
def test_a_field_name_yaml_reads_as_no_text_names_its_line_and_key(tmp_path: Path, name: str) -> None:
    """`on:` is a boolean, `1:` a number in YAML: the problem named only `lead.data` at the line
    of `data:`, with pydantic's "Input should be a valid string"."""
    text = HEAD + f"lead:\n  data:\n    email: email\n    {name}: email\n"
    (problem,) = problems_of(tmp_path, text)
    assert problem.startswith(f"{{file}}:11: lead.data.{name}: a name must be text: quote it"), problem


def test_an_unquoted_date_as_a_map_key_is_its_text(tmp_path: Path) -> None:
    """An unquoted date stays text as a value (docs: YAML pitfalls); as a map key it stopped the
    whole file with "(yaml): a key must be a scalar"."""
    text = HEAD + "lead:\n  data:\n    launch: {path: day, map: {2025-07-01: yes}}\n"
    assert data_of(tmp_path, text, {"email": "a@example.com", "day": "2025-07-01"}) == {"launch": True}


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("!!binary aGVsbG8=", "binary data is not a JSON value"),
        (".nan", "NaN or infinity is not a JSON value"),
    ],
)
def test_a_literal_json_cannot_carry_is_a_problem(tmp_path: Path, literal: str, message: str) -> None:
    """`!!binary` crashed the delivery (bytes are not JSON: TypeError), `.nan` was sent as null
    (a delete on a patch)."""
    text = HEAD + f"lead:\n  data:\n    x: {{value: {literal}}}\n"
    assert problems_of(tmp_path, text) == [f"{{file}}:10: lead.data.x.value: {message}"]


# --- lead state and custom field names -------------------------------------------------------------


def _cache(states: list[dict[str, Any]], fields: list[dict[str, Any]]) -> TableCache:
    async def fetch(table_id: str) -> dict[str, Any]:
        return {"id": table_id, "leadStates": states, "customFields": fields}

    return TableCache(fetch, ttl_s=60)


async def test_an_exact_name_wins_over_one_that_differs_in_case() -> None:
    """A pool with states "Won" and "won" (or fields "Budget" and "budget "): the last one read
    won, so `state: {value: Won}` set the lead to "won"."""
    cache = _cache(
        [{"id": "s1", "name": "Won", "default": True}, {"id": "s2", "name": "won"}],
        [{"id": "f1", "name": "Budget"}, {"id": "f2", "name": "budget "}],
    )
    assert await cache.resolve_state("t1", "Won") == "s1"
    assert await cache.resolve_state("t1", "won") == "s2"
    assert await cache.resolve_fields("t1", {"Budget": 5}) == {"f1": 5}


async def test_a_name_two_states_share_but_for_case_is_an_error_not_a_pick() -> None:
    cache = _cache(
        [{"id": "s1", "name": "Won", "default": True}, {"id": "s2", "name": "won"}],
        [{"id": "f1", "name": "Budget"}, {"id": "f2", "name": "budget"}],
    )
    with pytest.raises(MappingError, match="more than one lead state named 'WON'"):
        await cache.resolve_state("t1", "WON")
    with pytest.raises(MappingError, match="more than one custom field named 'BUDGET'"):
        await cache.resolve_fields("t1", {"BUDGET": 5})


async def test_a_name_that_does_not_resolve_rereads_the_table_at_most_once_a_second() -> None:
    # A batch whose every element names a state the pool lacks: one re-read for the batch, not
    # one or two per element. A state added to the pool meanwhile is found once that re-read is
    # a second old. (A name missing from a copy read by its TTL re-reads at once.)
    states = [{"id": "s1", "name": "New", "default": True}]
    reads: list[str] = []
    now = [100.0]

    async def fetch(table_id: str) -> dict[str, Any]:
        reads.append(table_id)
        return {"id": table_id, "leadStates": list(states), "customFields": []}

    cache = TableCache(fetch, ttl_s=60, clock=lambda: now[0])
    for _ in range(50):
        with pytest.raises(MappingError, match="has no lead state 'Won'"):
            await cache.resolve_state("t1", "Won")
    assert reads == ["t1", "t1"]  # read, then re-read once
    states.append({"id": "s2", "name": "Won"})
    now[0] += MIN_REFRESH_S
    assert await cache.resolve_state("t1", "Won") == "s2"
    assert len(reads) == 3
    cache.invalidate("t1")  # after an upstream 400: read at once
    assert await cache.resolve_state("t1", "New") == "s1"
    assert len(reads) == 4


async def test_deliveries_that_need_a_table_at_once_share_one_read() -> None:
    # A worker's deliveries in flight (100 by default) all miss the cache when it expires, or
    # at start: one read of the table, not one each; and one re-read for their unknown name.
    release = asyncio.Event()
    reads: list[str] = []

    async def fetch(table_id: str) -> dict[str, Any]:
        reads.append(table_id)
        await release.wait()
        return {"id": table_id, "leadStates": [{"id": "s1", "name": "New", "default": True}]}

    cache = TableCache(fetch, ttl_s=60)
    known = [asyncio.ensure_future(cache.resolve_state("t1", "New")) for _ in range(20)]
    unknown = [asyncio.ensure_future(cache.resolve_state("t1", "Won")) for _ in range(20)]
    cut = asyncio.ensure_future(cache.resolve_state("t1", "New"))
    await until(lambda: reads == ["t1"])
    cut.cancel()  # a caller cut (a drain) leaves the read to the others
    release.set()
    assert await asyncio.gather(*known) == ["s1"] * 20
    results = await asyncio.gather(*unknown, return_exceptions=True)
    assert all(isinstance(r, MappingError) for r in results)
    assert reads == ["t1", "t1"]  # the read, and one re-read for "Won"


async def test_a_read_begun_before_an_invalidate_is_not_kept() -> None:
    # After an upstream 400 the table is read anew: a read already in flight may predate the
    # change that the 400 reveals, so it is neither joined nor cached.
    gates = [asyncio.Event(), asyncio.Event()]
    versions = iter(["old", "new"])
    began: list[str] = []

    async def fetch(table_id: str) -> dict[str, Any]:
        version = next(versions)
        began.append(version)
        await gates[0 if version == "old" else 1].wait()
        return {"id": table_id, "leadStates": [{"id": version, "name": "S", "default": True}]}

    cache = TableCache(fetch, ttl_s=60)
    before = asyncio.ensure_future(cache.resolve_state("t1", None))
    await until(lambda: began == ["old"])
    cache.invalidate("t1")
    after = asyncio.ensure_future(cache.resolve_state("t1", None))
    gates[1].set()
    assert await after == "new"
    gates[0].set()
    assert await before == "old"  # its caller gets what it read ...
    assert await cache.resolve_state("t1", None) == "new"  # ... but the cache keeps the newer


async def test_names_compare_with_accents_composed() -> None:
    cache = _cache([{"id": "s1", "name": "Qualifi\u00e9", "default": True}], [])
    assert await cache.resolve_state("t1", "qualifie\u0301") == "s1"


# --- transforms --------------------------------------------------------------------------------


def test_rfc_2822_minus_zero_zone_is_utc_whatever_tz_says() -> None:
    """RFC 2822 §3.3: `-0000` is UTC (the sender's zone unknown); it was read in the `tz` option's
    zone, so the time moved by that zone's offset. (Without any zone, `tz` applies.)"""
    berlin = ZoneInfo("Europe/Berlin")
    got = format_datetime(parse_datetime("Tue, 01 Jul 2025 10:15:00 -0000", zone=berlin))
    assert got == "2025-07-01T10:15:00Z"
    got = format_datetime(parse_datetime("Tue, 01 Jul 2025 10:15:00", zone=berlin))
    assert got == "2025-07-01T08:15:00Z"


def test_direction_marks_around_a_number_boolean_or_date_are_ignored() -> None:
    """An RTL form's direction marks (U+200E/U+200F) around a value made `number`, `boolean` and
    `datetime` give null (the field was lost); `trim` and `email` already drop them."""
    assert to_number("\u200f5,000 \u20ac\u200f") == 5000
    assert to_boolean("\u200fyes\u200e") is True
    assert format_datetime(parse_datetime("\u200e2025-07-01T10:15:00Z")) == "2025-07-01T10:15:00Z"


def test_aliases_that_expand_without_bound_are_a_problem_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each alias was built again in full: 8 lines of `&lN [*lN-1 x 10]` took minutes and GBs
    (validate, start-up, and every hot reload in the running process). PyYAML itself shares them."""
    from bridge.mapping import source

    monkeypatch.setattr(source, "MAX_NODES", 10_000)
    lines = ["lead:", "  data:", "    a0: {value: &l0 [x, x, x, x, x, x, x, x, x, x]}"]
    lines += [f"    a{n}: {{value: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]}}" for n in range(1, 6)]
    (problem,) = problems_of(tmp_path, HEAD + "\n".join(lines) + "\n")
    assert "(yaml): the file expands to more than 10000 values (aliases included)" in problem
