"""scripts/bench.py runs end to end and reports its figures as its last line.

No speed assertions: the machine is shared and noisy. This only checks that
a small quick run works and reports positive numbers under the agreed keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "apply_limit",
    "initial_sync_memory",
    "initial_sync_memory_ratio",
    "write_overhead",
    "write_wait_p99_ms",
    "write_wait_big_txn_max_ms",
}


@pytest.mark.timeout(150)
def test_quick_subset_reports_positive_figures_as_json_last_line() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--quick",
            "--only",
            "apply_limit,initial_sync_memory,write_overhead,write_wait",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert set(figures) == EXPECTED, figures
    for key, value in figures.items():
        assert isinstance(value, int | float), (key, value, result.stderr[-2000:])
        assert value > 0, (key, value)


def test_unknown_benchmark_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown benchmark 'nope'" in result.stderr
