"""The JSON Schema of mapping files, generated from the models (and the provider registry).

    python -m bridge.mapping.schema > mappings/schema.json

Editors use it to complete and check mapping files (VS Code's YAML extension: a
`# yaml-language-server: $schema=schema.json` line). `provider:` is an enum of the registered
providers and `verify:` is checked against the chosen provider's options. A test proves the
committed file is current: regenerate it when the format or the provider registry changes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bridge.mapping.models import MappingFile
from bridge.providers.registry import PROVIDERS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def mapping_schema() -> dict[str, Any]:
    names = sorted(PROVIDERS)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(MappingFile, "validation")]
    models += [(PROVIDERS[name].Options, "validation") for name in names]
    refs, top = models_json_schema(models, by_alias=True, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    root_ref = refs[(MappingFile, "validation")]["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = {"$schema": SCHEMA_DIALECT, **defs.pop(root_ref)}
    schema["properties"]["provider"]["enum"] = names
    schema["allOf"] = [
        {
            "if": {"properties": {"provider": {"const": name}}, "required": ["provider"]},
            "then": {"properties": {"verify": refs[(PROVIDERS[name].Options, "validation")]}},
        }
        for name in names
    ]
    schema["$defs"] = defs
    return schema


def render() -> str:
    return json.dumps(mapping_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
