"""The bench's output: one table (rows with value, baseline, ratio, target, PASS/FAIL), the
results JSON, and the PNG plot of throughput and p99 against concurrency."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass
class Row:
    measurement: str
    value: float | None
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_mib: float | None = None
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    target: str = ""
    result: str = "info"  # PASS | FAIL | info
    note: str = ""


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


COLUMNS = (
    ("measurement", "<"),
    ("value", ">"),
    ("unit", "<"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("RSS MiB", ">"),
    ("baseline", "<"),
    ("baseline value", ">"),
    ("ratio", ">"),
    ("target", "<"),
    ("result", "<"),
)


def _cells(row: Row) -> list[str]:
    value_digits = 1 if row.value is not None and abs(row.value) < 100 and row.value != int(row.value) else 0
    base_digits = (
        1
        if row.baseline_value is not None
        and abs(row.baseline_value) < 100
        and row.baseline_value != int(row.baseline_value)
        else 0
    )
    return [
        row.measurement,
        _num(row.value, value_digits),
        row.unit,
        _num(row.p50_ms, 1),
        _num(row.p99_ms, 1),
        _num(row.rss_mib, 1),
        row.baseline or "-",
        _num(row.baseline_value, base_digits),
        f"{row.ratio:.2f}x" if row.ratio is not None else "-",
        row.target or "-",
        row.result,
    ]


def render(rows: list[Row]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs as is)."""
    table = [[name for name, _ in COLUMNS], *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        out = []
        for cell, width, (_, align) in zip(cells, widths, COLUMNS, strict=True):
            out.append(cell.ljust(width) if align == "<" else cell.rjust(width))
        return "| " + " | ".join(out) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if a == ">" else ("-" * (w + 2))
            for w, (_, a) in zip(widths, COLUMNS, strict=True)
        )
        + "|"
    )
    return "\n".join([line(table[0]), rule, *(line(cells) for cells in table[1:])])


def write_json(path: Path, rows: list[Row], details: dict[str, Any]) -> None:
    document = {"table": [asdict(row) for row in rows], "details": details}
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def plot(path: Path, sweep: dict[str, list[dict[str, Any]]], title: str) -> None:
    """Throughput and p99 against concurrency, one line per server (sweep: label -> points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rounds in sweep.items():
        best: dict[int, dict[str, Any]] = {}  # per connection count, its best round (as the table)
        for point in rounds:
            known = best.get(point["connections"])
            if known is None or point["req_per_s"] > known["req_per_s"]:
                best[point["connections"]] = point
        points = [best[c] for c in sorted(best)]
        xs = [p["connections"] for p in points]
        left.plot(xs, [p["req_per_s"] for p in points], marker="o", label=label)
        right.plot(xs, [p["p99_ms"] for p in points], marker="o", label=label)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections (wrk)")
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xticks([1, 8, 64, 256], labels=["1", "8", "64", "256"])
    left.set_ylabel("requests/s")
    left.set_title("throughput")
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    right.set_title("p99 latency")
    right.axhline(10, color="grey", linestyle="--", linewidth=1)
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
