"""Mapping throughput: lead commands per second of `CompiledMapping.plan`, in process, one core.

    python -m bench.mapping_bench [--seconds 3] [--json]

For each shipped example (mappings/<name>.yaml with its sample payload
tests/fixtures/payloads/<name>.json) the payload is parsed once, then `plan()` is driven in a tight
loop (its coroutine is stepped by hand: with no `enrich` it never suspends, so no event loop cost
is counted). Reported: commands/s for plan alone, and plans/s when the worker's `reparse` of the
raw body is included. Best of three rounds, to keep a neighbour's burst of CPU out of the figure.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("typeform-demo-request", "hubspot-contact-sync")
ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::-[^}]*)?\}")


def _step(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("plan() suspended: this benchmark only drives mappings without enrich")


def _rounds(fn: Any, seconds: float, rounds: int = 3) -> float:
    """Calls per second of fn(), best of `rounds` rounds of seconds/rounds each."""
    best = 0.0
    for _ in range(rounds):
        calls = 0
        deadline = time.perf_counter() + seconds / rounds
        started = time.perf_counter()
        while True:
            for _ in range(50):
                fn()
            calls += 50
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls / (now - started))
    return best


def measure(name: str, seconds: float) -> dict[str, Any]:
    from bridge.mapping import load_mappings

    path = ROOT / "mappings" / f"{name}.yaml"
    sample = ROOT / "tests" / "fixtures" / "payloads" / f"{name}.json"
    if not path.is_file() or not sample.is_file():
        return {"mapping": name, "error": f"missing {path.name} or its sample payload"}
    environ = {var: "bench-secret-0123456789abcdef" for var in ENV_VAR.findall(path.read_text())}
    mapping = load_mappings(path, environ).get(name)
    assert mapping is not None
    raw = sample.read_bytes()
    payload = orjson.loads(raw)
    commands = len(_step(mapping.plan(payload)).commands)
    headers = {"content-type": "application/json"}

    def plan_only() -> None:
        _step(mapping.plan(payload))

    def reparse_and_plan() -> None:
        _step(mapping.plan(mapping.provider.reparse(raw, headers)))

    plans_per_s = _rounds(plan_only, seconds)
    with_parse_per_s = _rounds(reparse_and_plan, seconds / 2)
    return {
        "mapping": name,
        "commands_per_plan": commands,
        "plans_per_s": round(plans_per_s),
        "commands_per_s": round(plans_per_s * commands),
        "commands_per_s_with_reparse": round(with_parse_per_s * commands),
        "us_per_command": round(1e6 / (plans_per_s * commands), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mapping_bench")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(name, args.seconds) for name in EXAMPLES]
    if args.json:
        sys.stdout.write(orjson.dumps(results).decode() + "\n")
        return
    for result in results:
        print(result)


if __name__ == "__main__":
    main()
