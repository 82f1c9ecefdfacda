"""leadbridge's benchmark: leadbridge and its baselines side by side, in one run, on loopback.

    .venv/bin/python bench/run.py [--quick] [--out bench/results] [--only STEP,...]
                                  [--env BRIDGE_X=Y ...] [--patch NAME,...] [--keep]

Starts everything itself (two embedded Valkey servers with `appendfsync always`, the Connect
sandbox with a clock on creates, the baselines, leadbridge's `serve`, `worker` and `run`), drives
them with wrk (installed from Debian's packages when missing) and bench/loadgen.py (fixed rate),
and stops every process it started at the end, on error, on Ctrl-C, on SIGTERM and when its time
budget runs out. Prints one table (value, p50/p99, RSS, baseline, ratio, the target of issue 7,
PASS/FAIL) and writes results.json, table.md and ingest.png under --out. Exit status 1 when a
target is missed. What each line means: docs/performance.md. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

if __name__ == "__main__":
    # Run with the project's venv (it has leadbridge installed), whatever python started us.
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])  # noqa: S606
    sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_wrk() -> str:
    """wrk from Debian's packages (apt-get update first only if the install needs it)."""
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: installing Debian's `wrk` package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, env=env, check=False, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
        subprocess.run(install, env=env, check=True, timeout=600)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("could not install wrk")
    return found


def ensure_python_packages() -> None:
    """What the bench needs beyond leadbridge's own dependencies, into the venv when missing."""
    needed = {
        "matplotlib": "matplotlib>=3.8",
        "psutil": "psutil>=5.9",
        "httpx_aiohttp": "httpx-aiohttp>=0.1.8",
    }
    missing = []
    for module, requirement in needed.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(requirement)
    if missing:
        log(f"installing {', '.join(missing)} into the venv")
        # At the versions of constraints.txt (`./dev lock` pins leadbridge[bench] too).
        pins = ["-c", str(ROOT / "constraints.txt")]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *pins, *missing], check=True, timeout=900
        )


def compile_bytecode() -> None:
    """Compile bridge/ and bench/ to bytecode (`__pycache__`, ignored by git) before anything is
    measured, as pip does when it installs the wheel (the shipped image loads .pyc files). Where
    PYTHONDONTWRITEBYTECODE is set, a checkout's own modules would otherwise be compiled from
    source by every process at every start: slower starts and, measured, about 0.7 MiB more RSS
    for a worker. Baselines and leadbridge are treated alike."""
    targets = [str(ROOT / "bridge"), str(ROOT / "bench")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *targets], check=True, timeout=300)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 3.5 minutes instead of 7)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output folder")
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="extra environment for leadbridge processes"
    )
    parser.add_argument(
        "--patch",
        default="",
        metavar="NAME,...",
        help="run leadbridge with experimental changes (bench/lb_patched.py): "
        "nodelay, uvloop, aiohttp, sniffio, nostore",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="STEP,...",
        help="run only these measurements: mapping, clients, ingest, delivery, whole (default: all; "
        "--quick skips clients)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, Valkey data)")
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env {item!r}: expected K=V")
    ensure_python_packages()
    wrk_path = ensure_wrk()
    compile_bytecode()

    from bench.harness import Harness
    from bench.report import plot, render, write_json
    from bench.scenarios import Durations, Scenarios

    durations = Durations.pick(args.quick)
    steps = [s.strip() for s in args.only.split(",") if s.strip()] or [
        s for s in Scenarios.STEPS if not (args.quick and s == "clients")
    ]
    unknown = sorted(set(steps) - set(Scenarios.STEPS))
    if unknown:
        parser.error(f"--only: unknown step(s) {unknown}; known: {', '.join(Scenarios.STEPS)}")
    work = Path(tempfile.mkdtemp(prefix="leadbridge-bench-"))
    extra_env = dict(item.split("=", 1) for item in args.env)
    harness = Harness(work, wrk_path=wrk_path, extra_env=extra_env, patches=args.patch)
    scenarios = Scenarios(harness, durations)

    def stop_on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Ctrl-C: Python's own handler even when started from a shell that ignores SIGINT, so that
    # asyncio cancels the run and the `finally` below stops everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGALRM, stop_on_signal)
    signal.alarm(durations.budget_s)
    started = time.monotonic()
    log(f"work folder {work}; time budget {durations.budget_s} s")

    async def body() -> None:
        try:
            await harness.start_infra()
            await scenarios.run(steps)
        finally:
            await harness.close()

    failed = False
    try:
        asyncio.run(body())
    except KeyboardInterrupt as exc:
        failed = True
        log(f"interrupted ({exc or 'Ctrl-C'}): stopping every process")
    except Exception as exc:
        failed = True
        log(f"failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        signal.alarm(0)
        harness.stop_everything()
        if args.keep or failed:
            log(f"logs kept in {work / 'logs'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results = scenarios.results
    order = ("ingest", "delivery", "whole", "latency", "mapping", "memory")
    rows = sorted(
        results.rows, key=lambda r: next((i for i, p in enumerate(order) if r.measurement.startswith(p)), 9)
    )
    table = render(rows) if rows else "(no results)"
    notes = "\n".join(f"- {r.measurement}: {r.note}" for r in rows if r.note)
    print(table)
    print(notes)
    if failed:
        sys.exit(130)
    if args.only and not rows:
        return
    elapsed = time.monotonic() - started
    results.details["meta"] = {
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "quick": args.quick,
        "seconds": round(elapsed, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "env": extra_env,
        "patches": args.patch,
        "steps": steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", rows, results.details)
    (args.out / "table.md").write_text(table + "\n\n" + notes + "\n")
    title = "ingest: leadbridge serve vs baselines (1.5 KB signed JSON, one uvicorn worker each)"
    if results.sweep:
        plot(args.out / "ingest.png", results.sweep, title)
    log(f"done in {elapsed:.0f} s; wrote results.json, table.md and ingest.png to {args.out}")
    if any(row.result == "FAIL" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
