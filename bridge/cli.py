"""The `leadbridge` command (also `python -m bridge`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge import imports
from bridge.errors import ConfigError, MappingValidationError
from bridge.settings import Settings, load_settings, unknown_settings

DESCRIPTION = """\
leadbridge: webhooks from form tools and CRMs in, leads out on the Connect API.

Start here:  leadbridge run --sandbox   (everything local: embedded Valkey, a sandbox upstream,
             the mappings in ./mappings), then follow what it prints.
"""

SANDBOX_ENV = "sandbox.env"
SANDBOX_URL_VARIABLE = "LEADBRIDGE_SANDBOX_URL"
SANDBOX_PORT_OFFSET = 10  # the sandbox listens beside the web port: 8000 -> 8010
SANDBOX_VALUES_HELP = (
    f"variables left unset take the demo values of {SANDBOX_ENV} beside the mappings, as with "
    "`run --sandbox` (the shipped mappings need them)"
)


class _VersionAction(argparse.Action):
    """`--version`: the installed distribution's version, looked up only when asked for
    (importlib.metadata costs every process memory; the worker has little to spare)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("leadbridge")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed: run ./dev)"
        sys.stdout.write(f"leadbridge {version}\n")  # stdout, as argparse's own "version" action
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadbridge", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_VersionAction, help="print leadbridge's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="web + worker in one process (the laptop setup)")
    run.add_argument(
        "--sandbox",
        action="store_true",
        help="use a local Connect sandbox (seeded demo Lead Pool) as the upstream; no API key needed",
    )
    run.add_argument(
        "--sandbox-port", type=int, default=None, help="sandbox port (default: BRIDGE_PORT + 10)"
    )
    sub.add_parser("serve", help="web only: receive and queue webhooks (Kubernetes web Deployment)")
    sub.add_parser(
        "worker",
        help="worker only: deliver queued webhooks (Kubernetes worker Deployment); "
        "probes on BRIDGE_WORKER_PROBE_PORT",
    )
    sandbox = sub.add_parser("sandbox", help="the local Connect API sandbox alone")
    sandbox.add_argument("--port", type=int, default=None, help="port (default: BRIDGE_PORT + 10)")
    sandbox.add_argument("--api-key", default=None, help="bearer key it accepts (default: sandbox-key)")

    mappings = sub.add_parser("mappings", help="check and dry-run mapping files")
    msub = mappings.add_subparsers(dest="mappings_command", required=True, metavar="SUBCOMMAND")
    validate = msub.add_parser("validate", help="check every mapping; errors name file, line and field")
    validate.add_argument(
        "path", nargs="?", type=Path, default=None, help="file or folder (default: BRIDGE_MAPPINGS)"
    )
    validate.add_argument("--sandbox", action="store_true", help=SANDBOX_VALUES_HELP)
    test = msub.add_parser(
        "test", help="print the lead commands a mapping makes from a payload; calls nothing (but --resolve)"
    )
    test.add_argument("name", help="mapping name (in BRIDGE_MAPPINGS), or a mapping file's path")
    test.add_argument("payload", type=Path, help="payload file (JSON, form, XML)")
    test.add_argument(
        "--header", action="append", default=[], metavar="K:V", help="a request header, repeatable"
    )
    test.add_argument("--sandbox", action="store_true", help=SANDBOX_VALUES_HELP)
    test.add_argument(
        "--resolve",
        action="store_true",
        help="also read each command's table (GET, from CONNECT_BASE_URL; with --sandbox and it "
        "unset, from a running sandbox's) and show the request bodies with lead state and custom "
        "field ids",
    )

    dlq = sub.add_parser("dlq", help="the dead-letter queue (works beside a running service)")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="SUBCOMMAND")
    dsub.add_parser("list", help="dead-lettered deliveries, oldest first")
    show = dsub.add_parser("show", help="one delivery with its reason and attempts")
    show.add_argument("id")
    replay = dsub.add_parser("replay", help="map again with the current mappings and deliver")
    replay_target = replay.add_mutually_exclusive_group(required=True)
    replay_target.add_argument("id", nargs="?")
    replay_target.add_argument("--all", action="store_true")
    purge = dsub.add_parser("purge", help="delete from the dead-letter queue")
    purge_target = purge.add_mutually_exclusive_group(required=True)
    purge_target.add_argument("id", nargs="?")
    purge_target.add_argument("--all", action="store_true")

    sample = sub.add_parser("send-sample", help="sign and send a mapping's sample payload (a first webhook)")
    sample.add_argument("name", nargs="?", default="website-contact")
    sample.add_argument(
        "--url", default=None, help="leadbridge base URL (default: http://BRIDGE_HOST:BRIDGE_PORT)"
    )
    sample.add_argument(
        "--payload", type=Path, default=None, help="payload file (default: the shipped sample)"
    )
    return parser


def sandbox_env_file(mappings_path: Path) -> Path:
    """The demo values beside the mappings (a folder, or the folder of one file)."""
    return (mappings_path if mappings_path.is_dir() else mappings_path.parent) / SANDBOX_ENV


def sandbox_environ(
    settings: Settings, sandbox_url: str | None = None, mappings_path: Path | None = None
) -> dict[str, str]:
    """The environment plus the demo values of `mappings/sandbox.env` (beside `mappings_path`,
    default BRIDGE_MAPPINGS) for variables left unset. Those values may refer to
    `${LEADBRIDGE_SANDBOX_URL}`: the sandbox's URL, when it runs."""
    environ = dict(os.environ)
    if sandbox_url is not None:
        environ[SANDBOX_URL_VARIABLE] = sandbox_url
    env_file = sandbox_env_file(mappings_path or settings.mappings_path)
    if env_file.is_file():
        from bridge.mapping.env import read_env_file

        try:
            demo = read_env_file(env_file, environ)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for key, value in demo.items():
            environ.setdefault(key, value)
    return environ


@contextmanager
def queue_url(settings: Settings, *, existing: bool = False) -> Iterator[str]:
    """REDIS_URL, or the embedded Valkey server (started, or attached to if one is running).
    `existing`: only a store that has been created in BRIDGE_DATA_DIR before (a command that
    reads the queue, such as `dlq list`, would otherwise report an empty new one)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    from bridge.queue.embedded import EmbeddedValkey, kept_running

    if existing and not EmbeddedValkey(settings.data_dir).exists():
        raise ConfigError(
            f"no leadbridge store in {settings.data_dir.resolve()} (BRIDGE_DATA_DIR): run this where "
            "`leadbridge run` runs, or set BRIDGE_DATA_DIR or REDIS_URL to its store"
        )
    with EmbeddedValkey(settings.data_dir) as server, kept_running(server):
        yield server.url


def run_event_loop(main: Coroutine[Any, Any, None], *, fast_loop: bool = True) -> None:
    """Run a long-lived process, on uvloop where it is installed (uvicorn[standard] brings it)
    and `fast_loop` asks for it. `serve` and `run` do: uvloop makes the web side faster. A
    worker does not: on asyncio's own loop it delivered about 8 % fewer leads per second in
    alternating quick runs of bench/ (well above its targets either way), and uvloop would add
    2.3 MiB to its memory, whose target it would then miss."""
    if not fast_loop:
        asyncio.run(main)
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not available on every platform
        asyncio.run(main)
        return
    uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    imports.apply()
    args = _parser().parse_args(argv)
    try:
        sys.exit(_dispatch(args))
    except MappingValidationError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"leadbridge: {len(exc.problems)} mapping problem(s); nothing was started", file=sys.stderr)
        sys.exit(1)
    except ConfigError as exc:
        print(f"leadbridge: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _dispatch(args: argparse.Namespace) -> int:
    settings = load_settings()
    from bridge import logs

    logs.configure(settings.effective_log_format, settings.log_level)
    for unknown in unknown_settings(os.environ):
        logging.getLogger("bridge.settings").warning(unknown)
    if args.command == "mappings":
        return _mappings(args, settings)
    if args.command == "dlq":
        from bridge import dlq_cli

        with queue_url(settings, existing=True) as url:
            return asyncio.run(dlq_cli.run(args, settings, url))
    if args.command == "send-sample":
        from bridge.samples import send_sample

        return send_sample(args.name, settings, sandbox_environ(settings), url=args.url, payload=args.payload)
    if args.command == "sandbox":
        return _sandbox(args, settings)
    return _service(args, settings)


def _mappings(args: argparse.Namespace, settings: Settings) -> int:
    from bridge import mapping_cli

    path: Path = settings.mappings_path
    if args.mappings_command == "validate" and args.path is not None:
        path = args.path
    name = getattr(args, "name", "")
    if args.mappings_command == "test" and name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise ConfigError(f"no mapping file at {name}")
        path = Path(name)  # a file of its own (one being written): its mapping, whatever its name
        name = ""
    beside = path  # the demo values: beside the mappings, or for a file elsewhere, BRIDGE_MAPPINGS'
    if path.is_file() and not sandbox_env_file(path).is_file():
        beside = settings.mappings_path
    environ: Mapping[str, str] = (
        sandbox_environ(settings, mappings_path=beside) if args.sandbox else os.environ
    )
    env_file = sandbox_env_file(beside)
    hint = None  # shown when a variable is unset and the demo values are there to be had
    if not args.sandbox and env_file.is_file():
        hint = f"add --sandbox to use the demo values of {env_file}"
    if args.mappings_command == "validate":
        return mapping_cli.validate(path, environ, sys.stdout, unset_hint=hint)
    headers = {}
    for item in args.header:
        key, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(f"--header {item!r}: expected K:V")
        headers[key.strip().lower()] = value.strip()
    upstream = None
    if args.resolve and args.sandbox and settings.connect_base_url is None:
        from bridge.sandbox import DEMO_API_KEY

        # the sandbox of `leadbridge run --sandbox` (or `leadbridge sandbox`) on this machine
        sandbox_url = f"http://127.0.0.1:{settings.port + SANDBOX_PORT_OFFSET}"
        upstream = mapping_cli.Upstream(sandbox_url, DEMO_API_KEY)
    elif args.resolve:
        base_url, key = settings.require_upstream(
            "--resolve reads the tables from it; for a running sandbox's, add --sandbox, or set "
            "CONNECT_BASE_URL=http://127.0.0.1:8010 CONNECT_API_KEY=sandbox-key"
        )
        upstream = mapping_cli.Upstream(base_url, key.get_secret_value())
    return mapping_cli.dry_run(
        name, args.payload, headers, path, environ, sys.stdout, resolve=upstream, unset_hint=hint
    )


def _sandbox(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from bridge.sandbox import DEMO_API_KEY, create_sandbox_app

    port = args.port if args.port is not None else settings.port + SANDBOX_PORT_OFFSET
    print(f"Connect sandbox on http://{settings.host}:{port} (bearer key: {args.api_key or DEMO_API_KEY})")
    uvicorn.run(
        create_sandbox_app(args.api_key or DEMO_API_KEY), host=settings.host, port=port, log_config=None
    )
    return 0


def _service(args: argparse.Namespace, settings: Settings) -> int:
    from bridge.processes import Upstream, bind, run_all

    sandbox = args.command == "run" and args.sandbox
    environ = dict(os.environ)
    upstream: Upstream | None = None
    if args.command in ("run", "worker") and not sandbox:
        base_url, key = settings.require_upstream()
        upstream = Upstream(base_url, key.get_secret_value())
    sandbox_sock = None
    if sandbox:
        default_port = settings.port + SANDBOX_PORT_OFFSET if settings.port else 0
        port = args.sandbox_port if args.sandbox_port is not None else default_port
        sandbox_sock = bind(settings.host, port)
        environ = sandbox_environ(settings, f"http://{settings.host}:{sandbox_sock.getsockname()[1]}")
        _warn_if_shared(settings)
    with queue_url(settings) as url:
        run_event_loop(
            run_all(
                settings,
                redis_url=url,
                environ=environ,
                upstream=upstream,
                web=args.command in ("run", "serve"),
                worker=args.command in ("run", "worker"),
                sandbox_sock=sandbox_sock,
                banner=args.command == "run",
            ),
            fast_loop=args.command != "worker",
        )
    return 0


def _warn_if_shared(settings: Settings) -> None:
    """`run --sandbox` beside another leadbridge on the same embedded Valkey: one queue, two
    sandboxes, and either worker delivers either's webhooks. Allowed (a second process can be
    meant to share the queue), but said."""
    if settings.redis_url:
        return
    from bridge.queue.embedded import EmbeddedValkey

    owner = EmbeddedValkey(settings.data_dir).running_owner()
    if owner is not None:
        print(
            f"leadbridge: warning: another leadbridge (pid {owner}) runs the queue in "
            f"{settings.data_dir.resolve()}; this run shares it, so either one's worker may deliver "
            "the other's webhooks, to its own sandbox. For a separate pipeline, set BRIDGE_DATA_DIR.",
            file=sys.stderr,
        )
