"""Shipped mappings on realistic payloads beyond their one sample: what the vendor documents it
sends for other forms and answers (tests/fixtures/payloads/variants/)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.mapping import load_mappings
from bridge.mapping.env import read_env_file

ROOT = Path(__file__).parent.parent
MAPPINGS = ROOT / "mappings"
PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
VARIANTS = PAYLOADS / "variants"


def shipped(name: str) -> Any:
    compiled = load_mappings(MAPPINGS / f"{name}.yaml", read_env_file(MAPPINGS / "sandbox.env")).get(name)
    assert compiled is not None
    return compiled


class FixtureFetcher:
    def __init__(self, record: Any) -> None:
        self.record = record

    async def __call__(self, url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        return copy.deepcopy(self.record)


async def test_meta_lead_with_first_and_last_name_questions_keeps_the_name() -> None:
    """Meta Instant Forms offer the prefill questions "First name" and "Last name" (field_data
    names `first_name`, `last_name`) as well as "Full name" (`full_name`). A form that asks for
    the first and last name must not give a lead without a name."""
    mapping = shipped("meta-lead-ads-form")
    payload = json.loads((PAYLOADS / "meta-lead-ads-form.json").read_text())
    record = json.loads((VARIANTS / "meta-lead-ads-form.first-last-name.enrich.json").read_text())
    (command,) = (await mapping.plan(payload, enrich=FixtureFetcher(record))).commands
    assert command.data.get("name") == "Nina Simone"
    assert command.data.get("email") == "nina.simone@example.com"
    # and the sample's full_name form still gives its name
    sample = json.loads((PAYLOADS / "meta-lead-ads-form.enrich.json").read_text())
    (command,) = (await mapping.plan(payload, enrich=FixtureFetcher(sample))).commands
    assert command.data.get("name") == "Ella Fitzgerald"
