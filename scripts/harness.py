#!/usr/bin/env python3
"""Run a crpeer cluster through a workload and faults, and judge convergence.

    .venv/bin/python scripts/harness.py --peers 10 --faults all --duration 20 --seed 7

Exit status: 0 converged, 1 diverged, 2 bad arguments, 3 the harness itself
failed (a node did not start or answer). ``--json`` prints the report (the
keys of :class:`peer.testing.Report`) on stdout; progress and the summary go
to stderr then. The same ``--seed`` replays the same writes and faults
(``--plan-only`` prints them).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any, cast

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from peer.errors import ConfigError
from peer.testing import (
    FAULT_PRESETS,
    LARGE_VALUES,
    MIGRATION_PRESETS,
    TOPOLOGIES,
    VALUE_PRESETS,
    ClusterSpec,
    HarnessError,
    Mode,
    Report,
    Scenario,
    Workload,
    fault_preset,
    make_plan,
    migration_preset,
    run_async,
    value_preset,
)
from peer.testing import Progress as RunProgress

__all__ = ["main"]

EXIT_CONVERGED, EXIT_DIVERGED, EXIT_USAGE, EXIT_HARNESS = 0, 1, 2, 3


def _scenario(options: dict[str, Any]) -> Scenario:
    peers, duration, seed = options["peers"], options["duration"], options["seed"]
    rate = options["rate"]
    if rate is None:
        rate = LARGE_VALUES.rate if options["values"] == "large" else 30.0
    plain = Workload(rate=rate, writes=options["writes"], keys=options["keys"])
    workload, limits = value_preset(options["values"], plain)
    return Scenario(
        ClusterSpec(
            peers=peers, topology=options["topology"], degree=options["degree"], limits=limits
        ),
        workload,
        faults=fault_preset(options["faults"], peers=peers, duration=duration, seed=seed)
        + migration_preset(options["migrations"], peers=peers, duration=duration, seed=seed),
        seed=seed,
        duration=duration,
        converge_timeout=options["converge_timeout"],
    )


async def _run_with_progress(
    scenario: Scenario, mode: Mode, directory: Path | None, console: Console
) -> Report:
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def show(p: RunProgress) -> None:
            if p.phase not in ("run", "converge"):
                return
            if p.phase not in tasks:
                tasks[p.phase] = bar.add_task(p.phase, total=p.total or 1, detail="")
            detail = f"{p.writes} writes, {p.faults} faults"
            bar.update(tasks[p.phase], completed=p.elapsed, detail=detail)
            if p.phase == "converge" and "run" in tasks:
                bar.update(tasks["run"], completed=scenario.duration)

        return await run_async(scenario, mode=mode, directory=directory, progress=show)


def _counts(counts: dict[str, int]) -> str:
    parts = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
    return f"{sum(counts.values())}" + (f" ({parts})" if parts else "")


def _summary(report: Report) -> Table:
    table = Table(title=f"crpeer harness: {report.peers} peers, {report.mode}, seed {report.seed}")
    table.add_column("measure")
    table.add_column("value")
    ttc = report.time_to_converge
    rows = [
        ("topology", report.topology),
        ("writes committed", _counts(report.writes_by_op)),
        ("faults injected", _counts(report.faults_by_kind)),
        ("bytes sent", f"{report.bytes_sent:,}"),
        ("sessions opened / failed", f"{report.sessions['opened']} / {report.sessions['failed']}"),
        ("max lag (versions)", str(max(report.max_lag().values(), default=0))),
        ("plan ran late by", f"{report.writes_late:.2f} s"),
        ("time to converge", "-" if ttc is None else f"{ttc:.3f} s"),
        ("elapsed", f"{report.elapsed:.1f} s"),
        ("verdict", "[green]converged" if report.converged else "[red]DIVERGED"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _plot(report: Report, path: Path) -> None:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")

    figure, axes = pyplot.subplots(figsize=(10, 5))
    for name, samples in report.lag.items():
        xs = [t for t, _ in samples]
        ys = [float("nan") if lag is None else lag for _, lag in samples]
        axes.plot(xs, ys, label=name, linewidth=1)
    axes.axvline(report.duration, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("seconds since start (dashed: faults over, final marks)")
    axes.set_ylabel("lag (origin versions behind)")
    axes.set_title(f"{report.peers} peers, {report.topology}, seed {report.seed}")
    axes.legend(ncol=2, fontsize="small")
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--peers", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--topology", type=click.Choice(TOPOLOGIES), default="mesh", show_default=True)
@click.option(
    "--degree", type=click.IntRange(1), default=3, show_default=True, help="links per peer (random)"
)
@click.option(
    "--mode", type=click.Choice(["inproc", "process"]), default="inproc", show_default=True
)
@click.option(
    "--rate",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="writes per second (Poisson)  [default: 30; 6 with --values large]",
)
@click.option("--writes", type=click.IntRange(0), default=None, help="stop after this many")
@click.option("--keys", type=click.IntRange(1), default=100, show_default=True, help="key space")
@click.option(
    "--duration",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="seconds of writes and faults, before the convergence wait",
)
@click.option(
    "--faults",
    type=click.Choice(FAULT_PRESETS),
    default="none",
    show_default=True,
    help="fault preset (see peer.testing.fault_preset)",
)
@click.option(
    "--migrations",
    type=click.Choice(MIGRATION_PRESETS),
    default="none",
    show_default=True,
    help="live schema migrations (see peer.testing.migration_preset)",
)
@click.option(
    "--values",
    type=click.Choice(VALUE_PRESETS),
    default="small",
    show_default=True,
    help="large: values of 1 KB to 3 MB in one- and many-row transactions, "
    "256 KiB frames (see peer.testing.value_preset)",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="drives topology, writes and faults"
)
@click.option(
    "--converge-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="lag plot (PNG)")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep the databases and node logs in this directory",
)
@click.option("--plan-only", is_flag=True, help="print the plan as JSON and exit")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="error",
    show_default=True,
    help="crpeer's log level (stderr)",
)
def main(**options: Any) -> None:
    """Run a crpeer cluster through a workload and faults, and judge convergence.

    Exit status: 0 converged, 1 diverged, 2 bad arguments, 3 harness failure.
    """
    if options["plot"] is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError("--plot needs matplotlib, which is not installed")
    try:
        scenario = _scenario(options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if options["plan_only"]:
        click.echo(json.dumps(make_plan(scenario).to_dict(), indent=1))
        return
    logging.basicConfig(level=options["log_level"].upper(), stream=sys.stderr)
    console = Console(stderr=True)
    try:
        report = asyncio.run(
            _run_with_progress(scenario, cast(Mode, options["mode"]), options["keep"], console)
        )
    except HarnessError as exc:
        console.print(f"[red]harness failed:[/red] {exc}")
        sys.exit(EXIT_HARNESS)
    console.print(_summary(report))
    for problem in report.problems:
        console.print(f"[red]-[/red] {problem}")
    if options["plot"] is not None:
        _plot(report, options["plot"])
    if options["as_json"]:
        click.echo(json.dumps(report.to_dict()))
    sys.exit(EXIT_CONVERGED if report.converged else EXIT_DIVERGED)


if __name__ == "__main__":
    main()
