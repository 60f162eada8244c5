"""benchmarks/scale.py (issue 35): the 1k smoke run of every part as CI runs it, and its table and targets.

The loader part's cases run in this process here (its `measure_isolated` swapped for an in-process timer): a spawned
process per case, as the benchmark measures memory, costs ~10 s of imports each on 2 cores."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("scale")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _in_process(case, *args):
    work = case(*args)
    started = time.perf_counter()
    work()
    return time.perf_counter() - started, 0.0


@pytest.fixture(scope="module")
def smoke(scale, tmp_path_factory):
    loader = importlib.import_module("scale_loader")
    original = loader.measure_isolated
    loader.measure_isolated = _in_process
    try:
        return scale.run_parts(list(scale.PARTS), [1000], tmp_path_factory.mktemp("scale"))
    finally:
        loader.measure_isolated = original


def test_every_part_gives_its_rows_at_1k(smoke):
    names = {row["what"] for row in smoke}
    for expected in ("pre-encode: time to first sample (fresh)", "pre-encode: resume at 50% / fresh",
                     "finalise: time", "loader: start-up time, dp 1000", "loader: state size per rank, dp 1",
                     "generate: decode+write peak memory"):
        assert expected in names, (expected, sorted(names))
    assert all(row["value"] >= 0 for row in smoke)
    states = [row for row in smoke if row["what"].startswith("loader: state size per rank")]
    assert states and all(row["value"] < 1024 for row in states)  # issue 35: an O(1) loader state


def test_the_table_fits_a_growth_exponent_and_checks_the_targets(scale):
    rows = [{"what": "grows", "n": n, "value": 2.0 * n, "unit": "s", "reference": None} for n in (1000, 10000)]
    rows += [{"what": "flat", "n": n, "value": 5.0, "unit": "MB", "reference": 7.0} for n in (1000, 10000)]
    rows += [{"what": "generate: decode+write peak memory", "n": n, "value": 100.0 + n / 1e6, "unit": "MB",
              "reference": None} for n in (32, 2048)]
    table = scale.table(rows[:4])
    assert "| grows | s | 2,000 | 20,000 | 1.00 |" in table and "| flat | MB | 5 (7) | 5 (7) | 0.00 |" in table
    (target,) = scale.targets(rows)
    assert target[0].startswith("generate: peak memory flat") and target[2] is True
