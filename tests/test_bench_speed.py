"""`python -m tests.bench` as a test (run with `-m bench -s`): every figure at quick sizes, the
table printed; a figure that could not be measured here is reported as skipped."""

from __future__ import annotations

import pytest

from tests import bench

pytestmark = pytest.mark.bench


def test_bench_speed_figures_at_quick_sizes() -> None:
    args = bench.parse(["--quick", "--sessions", "100", "--events", "500"])
    figures, skipped = bench.run(args)
    print("\n" + bench.table(figures, skipped))
    assert figures
