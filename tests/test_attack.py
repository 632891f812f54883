"""scripts/attack.py against a live ``crpeer serve``, and the flood soak on its memory.

The script runs as a user would run it (a reduced set of its cases, so it
cannot rot); the soak test uses its functions to flood a ``crpeer serve``
child process with rounds of junk connections and reads the child's RSS
from /proc.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "attack.py"


def load_attack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crpeer_attack", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_attack_script_holds_on_a_reduced_set() -> None:
    cases = ["plaintext", "no-client-cert", "oversized-preauth", "unauthenticated-connections"]
    arguments = [arg for case in cases for arg in ("--case", case)]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert lines == [f"{case}: held" for case in cases], result.stdout + result.stderr[-2000:]
    assert result.returncode == 0


def test_attack_script_refuses_an_unknown_case() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--case", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


ROUNDS, CONNECTIONS, SETTLE = 4, 300, 2.5
GROWTH_LIMIT_MIB = 32


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_flood_of_junk_connections_gives_its_memory_back(tmp_path: Path) -> None:
    attack: Any = load_attack()
    target = attack.start_target(tmp_path)
    try:

        async def soak() -> list[int]:
            tls = attack.no_verify_client(attack.minted_identity(tmp_path, "attacker"))
            figures = [await attack.settle_rss(target, SETTLE)]
            for _ in range(ROUNDS):
                await attack.flood(target, tls, CONNECTIONS)
                figures.append(await attack.settle_rss(target, SETTLE))
            return [figure // 1024 for figure in figures]

        rss = asyncio.run(soak())
        assert target.alive()
    finally:
        target.stop()
    shown = " -> ".join(f"{figure} MiB" for figure in rss)
    print(f"target RSS over {ROUNDS} floods of {CONNECTIONS} connections: {shown}")
    assert rss[-1] - rss[0] <= GROWTH_LIMIT_MIB, shown
    growth = [later - earlier for earlier, later in itertools.pairwise(rss[1:])]
    assert not all(step > 1 for step in growth), f"RSS grew every round: {shown}"
