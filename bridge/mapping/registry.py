"""The current mapping set, and reloading it: on SIGHUP (`reload()`) or when the files change (`watch()`).

    registry = MappingRegistry(Path("mappings"), os.environ)   # MappingValidationError stops start-up
    loop.add_signal_handler(signal.SIGHUP, registry.reload)
    task = asyncio.create_task(registry.watch(interval_s=2.0))
    mapping = registry.current.get("website-contact")

A reload that fails validation keeps the previous set and logs every problem (logger
`bridge.mapping`). `watch` polls the names, sizes, inodes and mtimes of the mapping files, so new,
changed, replaced (Kubernetes ConfigMap symlink swaps) and removed files all trigger a reload;
a bad change is reported once, not at every poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from bridge.errors import MappingValidationError
from bridge.mapping.compiled import CompiledMapping
from bridge.mapping.loader import MappingSet, load_mappings, mapping_files

logger = logging.getLogger("bridge.mapping")

Snapshot = tuple[tuple[str, int, int, int], ...]


def snapshot(path: Path) -> Snapshot:
    """What identifies the current state of the mapping files at `path`."""
    if not path.exists():
        return ()
    entries = []
    for file in mapping_files(path):
        try:
            stat = file.stat()
        except OSError:
            continue
        entries.append((file.name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(entries)


class MappingRegistry:
    """Holds the current MappingSet; replaces it whole, only with a set that validated."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ
        self._snapshot = snapshot(path)
        self._current = load_mappings(path, environ)
        self._log_warnings(self._current)

    @property
    def current(self) -> MappingSet:
        return self._current

    def get(self, name: str) -> CompiledMapping | None:
        return self._current.get(name)

    def changed(self) -> bool:
        return snapshot(self.path) != self._snapshot

    def reload(self) -> bool:
        """Load the files again; True when the new set replaced the old one."""
        before = snapshot(self.path)
        try:
            mappings = load_mappings(self.path, self.environ)
        except MappingValidationError as exc:
            self._snapshot = before
            logger.error(
                "mapping reload failed, keeping the previous %d mapping(s): %d problem(s)",
                len(self._current),
                len(exc.problems),
            )
            for problem in exc.problems:
                logger.error("mapping problem: %s", problem)
            return False
        self._snapshot = before
        self._current = mappings
        logger.info("mappings reloaded: %s", ", ".join(mappings.names) or "(none)")
        self._log_warnings(mappings)
        return True

    async def watch(self, interval_s: float = 2.0) -> None:
        """Poll for changed files and reload; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                self.reload()

    @staticmethod
    def _log_warnings(mappings: MappingSet) -> None:
        for warning in mappings.warnings:
            logger.warning("mapping warning: %s", warning)
