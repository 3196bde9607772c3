"""``mlsd monitoring``: serve | bench.

    mlsd monitoring serve                  # the monitoring service: /metrics, /alerts webhook, /dashboard (:8005)
    mlsd monitoring bench                  # drift vs Evidently at 1 M rows, sample-size sensitivity, alert path
                                           #   -> systems/monitoring/bench/monitoring.json (+ PNG)
    mlsd monitoring bench --only drift --rows 200000

Heavy imports (Evidently, the drift library, uvicorn) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from systems.common.errors import MlsdError

app = typer.Typer(help="Monitoring: drift, delayed-label performance, alerts that ask for retraining.")
console = Console()

BENCH_SECTIONS = ("drift", "sensitivity")


@app.command()
def serve(port: Annotated[int, typer.Option(help="port (default: settings api_port 8005)")] = 0) -> None:
    """Run the monitoring service (metrics, Alertmanager webhook, dashboard) in the foreground."""
    import uvicorn

    from systems.monitoring.serve import create_app
    from systems.monitoring.settings import MonitoringSettings

    settings = MonitoringSettings()
    console.print(f"dashboard on http://{settings.host}:{port or settings.api_port}/dashboard")
    uvicorn.run(create_app(settings), host=settings.host, port=port or settings.api_port, log_level="warning")


@app.command()
def bench(
    out: Annotated[
        Path | None,
        typer.Option(help="JSON report (a PNG beside it); default: systems/monitoring/bench/monitoring.json"),
    ] = None,
    only: Annotated[str, typer.Option(help=f"comma list of {','.join(BENCH_SECTIONS)} ('' = all)")] = "",
    rows: Annotated[
        int, typer.Option(help="rows per side (reference and current) of the drift comparison")
    ] = 1_000_000,
) -> None:
    """Drift on ``rows`` × 25 columns against Evidently's DataDriftPreset (same data, same run), and the
    sample-size table (why p-value tests flag everything on large windows)."""
    from systems.common.bench import BenchReport
    from systems.monitoring.bench import bench_drift, plot_report, sample_size_sensitivity

    wanted = {x.strip() for x in only.split(",") if x.strip()} or set(BENCH_SECTIONS)
    unknown = wanted - set(BENCH_SECTIONS)
    if unknown:
        raise MlsdError(f"unknown --only {sorted(unknown)}: use {','.join(BENCH_SECTIONS)}")
    report = BenchReport("monitoring", out=out)
    if "drift" in wanted:
        with console.status(f"drift: ours vs Evidently on {rows:,} + {rows:,} rows (Evidently takes minutes)"):
            drift = report.section("drift", bench_drift(rows))
        t = Table(title=f"drift on {rows:,} rows × 25 columns")
        for col in ("", "seconds", "peak MB", "columns flagged"):
            t.add_column(col, justify="right")
        n_cols = drift["columns"]["numeric"] + drift["columns"]["categorical"]
        t.add_row("ours", f"{drift['ours_s']:.1f}", f"{drift['ours_peak_mb']:,.0f}", "")
        t.add_row("Evidently", f"{drift['evidently_s']:.1f}", f"{drift['evidently_peak_mb']:,.0f}", "")
        console.print(t)
        console.print(f"speedup {drift['speedup']}×, agreement {drift['agreement']:.2f} over {n_cols} columns")
    if "sensitivity" in wanted:
        with console.status("sample-size sensitivity"):
            report.section("sensitivity", {"table": sample_size_sensitivity()})
    report.plot(lambda png: plot_report(report.data, png))
    console.print(f"[green]✓[/] wrote {report.path} and its PNG")
