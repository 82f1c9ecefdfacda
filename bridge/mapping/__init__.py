"""The declarative mapping engine: mapping files in, lead commands out.

    mappings = load_mappings(Path("mappings"), os.environ)     # checked and compiled at load
    plan = await mappings.get("website-contact").plan(payload)  # Plan(ignored, commands)

Modules: `source` (YAML with line numbers, `${VAR}`), `models` (the file format), `expressions`
(JMESPath), `transforms`, `values` (compiled value specs), `compiled` (CompiledMapping.plan),
`loader` (files, problems, MappingSet), `registry` (hot reload), `schema` (JSON Schema export),
`commands` (what the worker receives).
"""

from bridge.mapping.commands import LeadCommand, Plan
from bridge.mapping.compiled import CompiledMapping, EnrichFetcher
from bridge.mapping.loader import MappingSet, load_mappings

__all__ = ["CompiledMapping", "EnrichFetcher", "LeadCommand", "MappingSet", "Plan", "load_mappings"]
