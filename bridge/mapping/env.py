"""`${NAME}` and `${NAME:-default}` in mapping files, and the KEY=VALUE `.env` files.

    substitute("Bearer ${TOKEN}", {"TOKEN": "t"})   -> ("Bearer t", [], {"TOKEN": "t"})
    substitute("${REGION:-DE}", {})                  -> ("DE", [], {"REGION": "DE"})
    substitute("${MISSING}", {})                     -> ("", ["MISSING"], {})

A missing variable without a default is reported by name (the loader turns it into a
`file:line: field: ...` problem); it never becomes an empty secret. `$${` is a literal `${`.
Like Vector's `${VAR:-default}`, the default also applies when the variable is set but empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def substitute(text: str, environ: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    """Replace references in `text`: (result, names missing, {name: value used})."""
    if "${" not in text:
        return text, [], {}
    missing: list[str] = []
    used: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:  # `$${`: an escaped literal
            return "${"
        value = environ.get(name)
        default = match.group(2)
        if (value is None or value == "") and default is not None:
            value = default
        if value is None:
            missing.append(name)
            return ""
        used[name] = value
        return value

    return _REFERENCE.sub(replace, text), missing, used


def references(text: str) -> list[tuple[str, bool]]:
    """The variables a string references: (name, has a default)."""
    return [(m.group(1), m.group(2) is not None) for m in _REFERENCE.finditer(text) if m.group(1)]


def read_env_file(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse a KEY=VALUE file: `#` comments, blank lines, optional `export` and quotes. As in
    docker compose and python-dotenv, a value may reference variables, `${NAME}` or
    `${NAME:-default}`, resolved from `environ` and the lines above; a single-quoted value is
    taken as it is. A reference to nothing known and without a default is an error."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected KEY=VALUE")
        name, value = match.group(1), match.group(2).strip()
        quote = value[0] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else ""
        if quote:
            value = value[1:-1]
        if quote != "'":
            value, missing, _ = substitute(value, {**(environ or {}), **values})
            if missing:
                problem = f"variable {missing[0]} is not set and has no default"
                raise ValueError(f"{path}:{number}: {name}: {problem}")
        values[name] = value
    return values
