"""The data path's bookkeeping at the paper's scale: pre-encoding, finalisation, the training loader and decoding
for `generate`, measured at growing sizes, each row with its fitted growth exponent (issue 35).

    PYTHONPATH=. python benchmarks/scale.py [--sizes 1000 10000 100000 1000000] [--parts preencode loader generate]
                                            [--workdir outputs/bench_scale] [--json out.json]

Each part is a module `benchmarks/scale_<part>.py` with `rows(sizes, workdir) -> [row]`, a row being
{"what", "n", "value", "unit", "reference"}: `n` is the number of manifest entries (or of frames, for `generate`,
which says so in its row names), `reference` energon's value on the same shards where there is one. Manifests,
shards and encoders are synthetic and made on the fly (toy encoders), so the numbers measure the bookkeeping, not
decoding or the TAE. The exponent k is the least-squares slope of log(value) over log(n): a row that grows linearly
has k = 1, one that does not grow k = 0. Targets (issue 35) are checked after the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = ("preencode", "loader", "generate")
SIZES = (1_000, 10_000, 100_000, 1_000_000)


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(value) over log(n); None with fewer than two sizes or a value <= 0."""
    points = [(n, v) for n, v in points if v is not None and v > 0]
    if len({n for n, _ in points}) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(v) for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def grouped(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by `what`, in first-seen order, each group sorted by n."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["what"], []).append(row)
    return {what: sorted(group, key=lambda r: r["n"]) for what, group in groups.items()}


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def table(rows: list[dict]) -> str:
    """A markdown table: one line per row name, a column per size ("value (energon reference)"), the exponent."""
    sizes = sorted({row["n"] for row in rows})
    lines = ["| what | unit | " + " | ".join(f"n={n:,}" for n in sizes) + " | growth k |",
             "| --- | --- | " + " | ".join("---:" for _ in sizes) + " | ---: |"]
    for what, group in grouped(rows).items():
        by_n = {row["n"]: row for row in group}
        cells = []
        for n in sizes:
            row = by_n.get(n)
            cell = "" if row is None else _fmt(row["value"])
            if row is not None and row.get("reference") is not None:
                cell += f" ({_fmt(row['reference'])})"
            cells.append(cell)
        k = growth_exponent([(r["n"], r["value"]) for r in group])
        lines.append(f"| {what} | {group[0]['unit']} | " + " | ".join(cells) + f" | {'' if k is None else f'{k:.2f}'} |")
    return "\n".join(lines)


def _at_largest(rows: list[dict], what: str) -> dict | None:
    matching = [row for row in rows if row["what"] == what]
    return max(matching, key=lambda row: row["n"]) if matching else None


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) for issue 35's targets, at the largest size measured; None: not measured."""
    out = []
    ratios = [row for row in rows if row["what"] == "pre-encode: resume at 50% / fresh"]
    if ratios:
        worst = max(ratios, key=lambda row: row["value"])
        out.append(("pre-encode: resume at 50% <= fresh + 10%", f"worst {worst['value']:.2f}x (n={worst['n']:,})",
                    worst["value"] <= 1.1))
    rss = _at_largest(rows, "loader: start-up RSS, dp 1")
    if rss is not None:
        ref = rss.get("reference")
        out.append(("loader: start-up RSS within 2x of energon's",
                    f"{rss['value']:.0f} MB vs energon {'-' if ref is None else f'{ref:.0f} MB'} (n={rss['n']:,})",
                    None if ref is None else rss["value"] <= 2 * ref))
    states = [row for row in rows if row["what"].startswith("loader: state size per rank")]
    if states:
        worst = max(states, key=lambda row: row["value"])
        out.append(("loader: state under 1 KB per rank", f"largest {worst['value']:.0f} B ({worst['what']}, "
                    f"n={worst['n']:,})", worst["value"] < 1024))
    memory = [row for row in rows if row["what"] == "generate: decode+write peak memory"]
    if len(memory) > 1:
        low, high = min(r["value"] for r in memory), max(r["value"] for r in memory)
        k = growth_exponent([(r["n"], r["value"]) for r in memory])
        out.append(("generate: peak memory flat from 32 to 2,048 frames",
                    f"{low:.0f}-{high:.0f} MB over {min(r['n'] for r in memory)}-{max(r['n'] for r in memory)} "
                    f"frames, k={k:.2f}", k is not None and k < 0.15))
    return out


def run_parts(parts: list[str], sizes: list[int], workdir: Path) -> list[dict]:
    rows = []
    for part in parts:
        module = importlib.import_module(f"scale_{part}")
        for row in module.rows(list(sizes), workdir / part):
            missing = {"what", "n", "value", "unit"} - row.keys()
            if missing:
                raise ValueError(f"benchmarks/scale_{part}.py gave a row without {sorted(missing)}: {row}")
            rows.append({"reference": None, **row, "part": part})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="manifest entry counts")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as scratch:
        rows = run_parts(args.parts, args.sizes, args.workdir or Path(scratch))
    for part in dict.fromkeys(row["part"] for row in rows):  # one table per part: generate's n counts frames
        print(f"\n{part}\n")
        print(table([row for row in rows if row["part"] == part]))
    print()
    for target, measured, met in targets(rows):
        print(f"target {target}: {measured}: {'met' if met else 'NOT met' if met is False else 'no reference'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
