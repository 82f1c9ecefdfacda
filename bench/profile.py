"""Profile leadbridge's processes under the benchmark's load with py-spy, and summarise.

    .venv/bin/python bench/profile.py [--seconds 20] [--only serve,worker,run] [--out DIR]
                                      [--env K=V ...] [--patch NAME,...]

    serve   `leadbridge serve` under wrk at 64 connections
    worker  `leadbridge worker` draining a pre-filled queue (sandbox upstream, no latency)
    run     `leadbridge run` (web + worker in one process) at a fixed 300 webhooks/s

For each, py-spy samples the process (on-CPU samples only, `--nolineno`) and writes the folded
stacks to DIR/<name>.folded (open them in speedscope, or feed them to flamegraph.pl), and a
summary DIR/<name>.txt: where the CPU goes by library (the leaf frame's package), the top
functions by own time, and the top bridge/ functions by total (inclusive) time. `--patch` runs
leadbridge through bench/lb_patched.py with the named experimental changes (see that module).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

if __name__ == "__main__":
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])  # noqa: S606
    sys.path.insert(0, str(ROOT))

from bench.harness import Harness, log  # noqa: E402
from bench.meters import CpuMeter  # noqa: E402
from bench.run import compile_bytecode, ensure_wrk  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
SITE = "site-packages/"
INCLUSIVE = set(
    [
        "redis",
        "httpx",
        "httpcore",
        "arq",
        "logging",
        "prometheus_client",
        "starlette",
        "uvicorn",
        "jmespath",
        "pydantic",
        "json",
        "hmac",
        "phonenumbers",
        "aiohttp",
        "httpx_aiohttp",
        "importlib",
    ]
)


def ensure_py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found:
        return found
    log("installing py-spy into the venv")
    pins = ["-c", str(ROOT / "constraints.txt")]  # the version `./dev lock` pinned
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *pins, "py-spy>=0.3.14"], check=True, timeout=600
    )
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("could not install py-spy")
    return found


def area(file: str) -> str:
    """What a frame's file belongs to: bridge/<module>, or the top package or stdlib module
    (py-spy writes paths relative to their sys.path entry: `redis/asyncio/client.py`)."""
    if file.startswith("<"):
        return file
    path = file.split(SITE, 1)[1] if SITE in file else file
    parts = path.split("/")
    if parts[0] == "bridge" and len(parts) > 1:
        return "bridge/" + "/".join(parts[1:]).removesuffix(".py")
    return parts[0].removesuffix(".py")


def task_root(frames: list[str]) -> str:
    """The coroutine or callback an event-loop sample was running (the frame after Handle._run)."""
    for index, frame in enumerate(frames):
        if frame.startswith("Handle._run"):
            return frames[index + 1] if index + 1 < len(frames) else "(callback)"
    if any(f.startswith("BaseEventLoop._run_once") for f in frames):
        return "event loop itself: " + frames[-1]
    return "(stack cut short by py-spy)"


def summarise(folded: Path, title: str) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    samples = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        by_task[task_root(stack.split(";"))] += count
        frames = []
        for raw in stack.split(";"):
            match = FRAME.match(raw)
            if match:
                frames.append((match["func"], match["file"]))
        if not frames:
            continue
        func, file = frames[-1]
        own[f"{func} ({_short(file)})"] += count
        for name in {area(p).split("/")[0] for _, p in frames[1:]} & INCLUSIVE:
            on_stack[name] += count
        by_area[area(file)] += count
        for name in {f"{f} ({_short(p)})" for f, p in frames if "bridge/" in p}:
            total[name] += count
    if not samples:
        return f"{title}: no samples\n"

    def table(counter: Counter[str], limit: int) -> list[str]:
        return [f"  {100 * n / samples:5.1f}%  {name}" for name, n in counter.most_common(limit)]

    lines = [f"{title}: {samples} on-CPU samples", "", "CPU by library (own time of the leaf frame):"]
    lines += table(by_area, 20)
    lines += ["", "CPU with a frame of this library on the stack (inclusive):", *table(on_stack, 15)]
    lines += ["", "CPU by task (what the event loop was running):", *table(by_task, 15)]
    lines += ["", "top functions by own time:", *table(own, 30)]
    lines += ["", "bridge/ functions by total time (including what they call):", *table(total, 30)]
    return "\n".join(lines) + "\n"


def _short(file: str) -> str:
    if SITE in file:
        return file.split(SITE, 1)[1]
    if "/bridge/" in file:
        return "bridge/" + file.split("/bridge/", 1)[1]
    return file.rsplit("/lib/python3", 1)[-1]


async def record(py_spy: str, pid: int, seconds: int, out: Path) -> None:
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
            "--format", "raw", "--nolineno", "--output", str(out)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout=seconds + 30)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-400:]}")


async def profile_serve(bench: Harness, py_spy: str, seconds: int, out: Path) -> list[Path]:
    url = await bench.start_web("serve")
    try:
        load = asyncio.create_task(bench.wrk(url, 64, seconds + 4, "pserve"))
        await asyncio.sleep(2)
        pids = {"serve": bench.procs.pid("serve"), "valkey": bench.lb_valkey_pid}
        with CpuMeter(pids) as cpu:
            await record(py_spy, bench.procs.pid("serve"), seconds, out / "serve.folded")
        result = await load
        log(f"serve: {result['req_per_s']:,.0f} req/s, p99 {result['p99_ms']:.1f} ms; cpu % {cpu.result}")
    finally:
        bench.procs.stop("serve")
    return [out / "serve.folded"]


async def profile_worker(bench: Harness, py_spy: str, seconds: int, out: Path) -> list[Path]:
    await bench.prefill_leadbridge(max(3000, seconds * 600))
    await bench.sandbox_reset()
    await bench.start_lb_worker()
    try:
        pids: dict[str, int | None] = {
            "worker": bench.procs.pid("worker"),
            "sandbox": bench.procs.pid("sandbox"),
        }
        pids["valkey"] = bench.lb_valkey_pid
        with CpuMeter(pids) as cpu:
            await asyncio.gather(
                record(py_spy, bench.procs.pid("worker"), seconds, out / "worker.folded"),
                record(py_spy, bench.procs.pid("sandbox"), seconds, out / "sandbox.folded"),
            )
        stats = await bench.sandbox_stats()
        span = stats["last"] - stats["first"]
        log(f"worker: {stats['creates']} leads in {span:.1f} s; cpu % {cpu.result}")
    finally:
        bench.procs.stop("worker")
    return [out / "worker.folded", out / "sandbox.folded"]


async def profile_run(bench: Harness, py_spy: str, seconds: int, out: Path) -> list[Path]:
    await bench.lb_redis.flushall()
    await bench.sandbox_reset()
    url = await bench.start_web("run")
    try:
        load = asyncio.create_task(bench.loadgen(url, 300, seconds + 4, "prun"))
        await asyncio.sleep(2)
        pids: dict[str, int | None] = {"run": bench.procs.pid("run"), "sandbox": bench.procs.pid("sandbox")}
        pids["valkey"] = bench.lb_valkey_pid
        with CpuMeter(pids) as cpu:
            await record(py_spy, bench.procs.pid("run"), seconds, out / "run.folded")
        result = await load
        log(f"run: {result['completed']} answered, statuses {result['statuses']}; cpu % {cpu.result}")
    finally:
        bench.procs.stop("run")
    return [out / "run.folded"]


async def main_async(bench: Harness, only: list[str], seconds: int, out: Path, py_spy: str) -> None:
    try:
        await bench.start_infra()
        profilers = {"serve": profile_serve, "worker": profile_worker, "run": profile_run}
        for name in only:
            log(f"profiling {name} for {seconds} s")
            for folded in await profilers[name](bench, py_spy, seconds, out):
                text = summarise(folded, folded.stem)
                folded.with_suffix(".txt").write_text(text)
                print(text)
    finally:
        await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/profile.py", description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--only", default="serve,worker,run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile")
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--patch", default="", help="experimental changes, see bench/lb_patched.py")
    parser.add_argument("--summarise", type=Path, nargs="*", help="only summarise existing .folded files")
    args = parser.parse_args()
    if args.summarise:
        for path in args.summarise:
            print(summarise(path, path.stem))
        return
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    py_spy = ensure_py_spy()
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="leadbridge-profile-"))
    extra_env = dict(item.split("=", 1) for item in args.env)
    bench = Harness(work, wrk_path=ensure_wrk(), extra_env=extra_env, patches=args.patch)

    def stop_on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGALRM, stop_on_signal)
    signal.alarm(120 + 4 * args.seconds * len(only))  # a time budget, like bench/run.py's
    try:
        asyncio.run(main_async(bench, only, args.seconds, args.out, py_spy))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}): stopping every process")
        sys.exit(130)
    finally:
        signal.alarm(0)
        bench.stop_everything()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
