"""Planning: control keys as a table (fixtures/mapping/plans.yaml), enrich, errors, the patch property."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import MappingError, UpstreamError
from bridge.mapping import CompiledMapping, LeadCommand, Plan, load_mappings
from bridge.mapping.env import read_env_file

try:
    from bridge.sandbox.merge_patch import merge_patch
except ImportError:  # pragma: no cover - written in parallel; RFC 7396 section 2 as a fallback

    def merge_patch(target: Any, patch: Any) -> Any:
        if not isinstance(patch, dict):
            return patch
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = merge_patch(result.get(key), value)
        return result


ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "mapping"
PLANS: dict[str, Any] = yaml.safe_load((FIXTURES / "plans.yaml").read_text())


def build(folder: Path, mapping: dict[str, Any], name: str = "m") -> CompiledMapping:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**PLANS["base"], **mapping}))
    compiled = load_mappings(path, {}).get(mapping.get("name", PLANS["base"]["name"]))
    assert compiled is not None
    return compiled


def run_sync(coroutine: Coroutine[Any, Any, Plan]) -> Plan:
    """Run a plan that never awaits (no enrich) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("plan awaited something")


class TableFetcher:
    """Serves a fixed JSON per URL and records each call."""

    def __init__(self, records: Mapping[str, Any]) -> None:
        self.records = records
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        self.calls.append((url, dict(headers)))
        return copy.deepcopy(self.records[url])


@pytest.mark.parametrize("case", PLANS["cases"], ids=[case["id"] for case in PLANS["cases"]])
async def test_plan(case: dict[str, Any], tmp_path: Path) -> None:
    mapping = build(tmp_path, case["mapping"])
    fetcher = TableFetcher(case["enrich"]) if "enrich" in case else None
    kwargs: dict[str, Any] = {"enrich": fetcher}
    if "max_commands" in case:
        kwargs["max_commands"] = case["max_commands"]
    if "error" in case:
        with pytest.raises(MappingError) as caught:
            await mapping.plan(case["payload"], **kwargs)
        assert caught.value.message == case["error"]
        return
    plan = await mapping.plan(case["payload"], **kwargs)
    assert isinstance(plan, Plan)
    if case.get("ignored"):
        assert plan.ignored
        assert plan.commands == []
        return
    assert not plan.ignored
    assert len(plan.commands) == len(case["commands"])
    for command, expected in zip(plan.commands, case["commands"], strict=True):
        assert isinstance(command, LeadCommand)
        dumped = command.model_dump(mode="json")
        assert {field: dumped[field] for field in expected} == expected
        # built without validation, yet exactly what validation would build (`element` is not shown)
        assert LeadCommand.model_validate({**dumped, "element": command.element}) == command
    if fetcher is not None:
        assert [url for url, _ in fetcher.calls] == list(case["enrich"])


async def test_enrich_passes_headers_and_needs_a_fetcher(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nname: meta\nprovider: none\nverify: {insecure: true}\ntable: t\naction: create\n"
        "enrich:\n  url: https://graph.example/{id}?access_token=${PAGE_TOKEN}\n"
        '  headers: {Authorization: "Bearer ${PAGE_TOKEN}"}\n  as: lead\n  timeout_s: 3\n'
        "lead:\n  data:\n    email: lead.email\n    id: id\n"
    )
    mapping = load_mappings(path, {"PAGE_TOKEN": "tok"}).get("meta")
    assert mapping is not None
    assert mapping.enrich is not None
    assert mapping.enrich.timeout_s == 3
    fetcher = TableFetcher({"https://graph.example/9?access_token=tok": {"email": "a@b.io"}})
    plan = await mapping.plan({"id": 9}, enrich=fetcher)
    assert fetcher.calls == [("https://graph.example/9?access_token=tok", {"Authorization": "Bearer tok"})]
    assert plan.commands[0].data == {"email": "a@b.io", "id": 9}
    with pytest.raises(MappingError, match="no fetcher was given"):
        await mapping.plan({"id": 9})


async def test_enrich_of_a_non_object_element_and_fetch_errors_propagate(tmp_path: Path) -> None:
    mapping = build(
        tmp_path,
        {
            "each": "ids",
            "enrich": {"url": "https://x.example/{@}", "as": "r"},
            "lead": {"data": {"n": "r.n"}},
        },
    )
    fetcher = TableFetcher({"https://x.example/1": {"n": "one"}, "https://x.example/2": {"n": "two"}})
    plan = await mapping.plan({"ids": [1, 2]}, enrich=fetcher)
    assert [c.data for c in plan.commands] == [{"n": "one"}, {"n": "two"}]

    async def failing(url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        raise UpstreamError("enrich fetch failed", retryable=True, status=503)

    with pytest.raises(UpstreamError):
        await mapping.plan({"ids": [1]}, enrich=failing)


async def test_isolate_leaves_out_elements_that_fail_for_good_and_says_why(tmp_path: Path) -> None:
    mapping = build(
        tmp_path,
        {
            "action": "upsert",
            "each": "items",
            "key": "id",
            "lead": {"data": {"email": {"path": "email", "required": True}}},
        },
    )
    items = [{"id": 1, "email": "a@x.io"}, {"id": 2}, {"email": "c@x.io"}, {"id": 4, "email": "d@x.io"}]
    payload = {"items": items}
    with pytest.raises(MappingError):  # without `isolate` (the dry run), the first failure raises
        await mapping.plan(payload)
    plan = await mapping.plan(payload, isolate=True)
    assert [c.index for c in plan.commands] == [0, 3]
    assert [(f.index, f.key, f.kind) for f in plan.failures] == [(1, "2", "mapping"), (2, None, "mapping")]
    assert plan.failures[0].reason.startswith("mapping error: lead.data.email")
    assert plan.failures[1].reason.startswith("mapping error: key")
    assert all(f.element and f.element.startswith("e") for f in plan.failures)
    assert "failures" not in plan.model_dump()  # the dry run's JSON is as it was


async def test_isolate_leaves_a_refused_enrich_out_and_still_raises_one_to_retry(tmp_path: Path) -> None:
    mapping = build(
        tmp_path,
        {
            "each": "ids",
            "enrich": {"url": "https://x.example/{@}", "as": "r"},
            "lead": {"data": {"n": "r.n"}},
        },
    )

    async def gone_or_down(url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        if url.endswith("/2"):
            raise UpstreamError("enrich fetch answered 404", retryable=False, status=404)
        if url.endswith("/3"):
            raise UpstreamError("enrich fetch answered 503", retryable=True, status=503)
        return {"n": url[-1]}

    plan = await mapping.plan({"ids": [1, 2]}, enrich=gone_or_down, isolate=True)
    assert [c.data for c in plan.commands] == [{"n": "1"}]
    assert [(f.index, f.kind, f.status, f.reason) for f in plan.failures] == [
        (1, "upstream", 404, "enrich fetch answered 404")
    ]
    with pytest.raises(UpstreamError):  # may pass: the whole delivery is tried again
        await mapping.plan({"ids": [1, 3]}, enrich=gone_or_down, isolate=True)


async def test_isolate_stops_fetching_after_five_refusals_in_a_row(tmp_path: Path) -> None:
    # A source refusing every record (403: a token without the scope) costs a delivery's first
    # run five fetches, not one per element; one record found in between starts the count again.
    mapping = build(
        tmp_path,
        {
            "each": "ids",
            "enrich": {"url": "https://x.example/{@}", "as": "r"},
            "lead": {"data": {"n": "r.n"}},
        },
    )
    fetched: list[str] = []

    async def refusing(url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        fetched.append(url)
        if url.endswith("/ok"):
            return {"n": "ok"}
        raise UpstreamError("enrich fetch answered 403", retryable=False, status=403)

    ids = ["a", "b", "c", "d", "ok", "e", "f", "g", "h", "i", "j", "k"]
    await mapping.plan({"ids": ids}, enrich=refusing, isolate=True)  # no limit: a retry, a replay
    assert len(fetched) == len(ids)
    fetched.clear()
    plan = await mapping.plan({"ids": ids}, enrich=refusing, isolate=True, enrich_refusals=5)
    assert [c.data for c in plan.commands] == [{"n": "ok"}]
    assert [url.rsplit("/", 1)[1] for url in fetched] == ids[:10]
    held = [(f.index, f.reason) for f in plan.failures if f.kind == "held"]
    reason = "not fetched: the enrich source refused the 5 elements before it"
    assert held == [(10, reason), (11, reason)]
    assert len(plan.failures) == 11


async def test_isolate_does_not_apply_without_each(tmp_path: Path) -> None:
    mapping = build(tmp_path, {"lead": {"data": {"email": {"path": "email", "required": True}}}})
    with pytest.raises(MappingError):
        await mapping.plan({}, isolate=True)


SECRET_VALUE = "Zq9-unique-payload-value"


@pytest.mark.parametrize(
    ("mapping", "payload"),
    [
        ({"lead": {"data": {"e": {"path": "e", "then": ["email"], "required": True}}}}, {"e": SECRET_VALUE}),
        ({"lead": {"data": {"n": "length(e)"}}}, {"e": 5}),
        ({"lead": {"data": {"n": "abs(e)"}}}, {"e": SECRET_VALUE}),
        ({"each": "e", "lead": {"data": {"n": "@"}}}, {"e": SECRET_VALUE}),
        ({"action": "upsert", "key": "e"}, {"e": {"inner": SECRET_VALUE}}),
        ({"lead": {"state": "e"}}, {"e": [SECRET_VALUE]}),
        ({"enrich": {"url": "https://x.example/{e}", "as": "r"}}, {"e": {"k": SECRET_VALUE}}),
    ],
)
async def test_mapping_errors_never_contain_payload_values(
    mapping: dict[str, Any], payload: Any, tmp_path: Path
) -> None:
    compiled = build(tmp_path, mapping)
    with pytest.raises(MappingError) as caught:
        await compiled.plan(payload, enrich=TableFetcher({}))
    assert SECRET_VALUE not in str(caught.value)
    assert "5" not in caught.value.message.replace("JMESPath", "")


# --- the merge-patch property ---------------------------------------------------------------------

PROPERTY_MAPPING = {
    "name": "prop",
    "action": "patch",
    "key": "id",
    "lead": {
        "data": {
            "email": {"path": "src.email", "when": "contains(changed, 'email')", "on_null": "delete"},
            "phone": {"path": "src.phone", "when": "contains(changed, 'phone')", "on_null": "delete"},
            "name": {"path": "src.name", "then": ["trim", "empty_to_null"]},
            "score": {"path": "src.score", "then": ["number"], "default": 0, "when": "src.score != null"},
        }
    },
}
MAPPED = ("email", "phone", "name", "score")
scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
entries = st.dictionaries(st.sampled_from([*MAPPED, "company", "notes", "a"]), json_values, max_size=7)
sources = st.dictionaries(st.sampled_from(MAPPED), scalars | st.lists(scalars, max_size=2), max_size=4)
changes = st.lists(st.sampled_from(MAPPED), unique=True, max_size=4)


@functools.lru_cache(maxsize=1)
def property_mapping() -> CompiledMapping:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mapping-prop-"))
    try:
        return build(folder, PROPERTY_MAPPING, "prop")
    finally:
        (folder / "prop.yaml").unlink()
        folder.rmdir()


@settings(max_examples=300, deadline=None)
@given(entry=entries, source=sources, changed=changes)
def test_patch_changes_exactly_the_mapped_keys(
    entry: dict[str, Any], source: dict[str, Any], changed: list[str]
) -> None:
    mapping = property_mapping()
    plan = run_sync(mapping.plan({"id": 1, "src": source, "changed": changed}))
    (command,) = plan.commands
    before = copy.deepcopy(entry)
    patch = {"data": command.data} if command.data else {}
    after = merge_patch({"data": entry}, patch)["data"] if patch else entry
    assert entry == before  # the patch does not mutate the entry it is applied to
    assert set(command.data) <= set(MAPPED)
    for key in set(entry) | set(MAPPED):
        if key not in command.data:
            assert (key in after, after.get(key)) == (key in entry, entry.get(key)), key
        elif command.data[key] is None:
            assert key not in after
        elif isinstance(command.data[key], dict):
            pytest.fail("mapped scalars never become objects")
        else:
            assert after[key] == command.data[key]
    # which keys are sent is exactly decided by `when` and the resolved value
    assert ("email" in command.data) == ("email" in changed)
    assert ("phone" in command.data) == ("phone" in changed)
    name = source.get("name")
    assert ("name" in command.data) == (
        isinstance(name, str | int | bool | list)
        and not (isinstance(name, str) and not name.strip())
        and name != []
    )


def test_plan_speed_smoke() -> None:
    """A loose floor (the real target, 20,000/s per core, is measured by bench/): catches a 10x regression."""
    mapping = load_mappings(
        ROOT / "mappings" / "website-contact.yaml", read_env_file(ROOT / "mappings" / "sandbox.env")
    )
    compiled = mapping.get("website-contact")
    assert compiled is not None
    import orjson

    payload = orjson.loads(
        (Path(__file__).parent / "fixtures" / "payloads" / "website-contact.json").read_bytes()
    )
    count = 2000
    started = time.perf_counter()
    for _ in range(count):
        run_sync(compiled.plan(payload))
    rate = count / (time.perf_counter() - started)
    assert rate > 2000, f"{rate:.0f} commands/s"
