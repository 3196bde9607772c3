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


@app.command()
def demo() -> None:
    """A drifted and a clean model through drift detection and the alert loop, in one process (~10 s).

    Three windows of synthetic records per model: the drifted one opens one incident (not three), the clean
    one none; the table shows each column's statistic against its threshold.
    """
    import tempfile

    from systems.monitoring.alerts import AlertLoop, AlertPolicy, IncidentBook
    from systems.monitoring.drift import detect_drift, fit_schema
    from systems.monitoring.results import WindowKey, WindowResult
    from systems.monitoring.synthetic import make_drift_frames

    with tempfile.TemporaryDirectory() as tmp:
        loop = AlertLoop(IncidentBook(Path(tmp) / "incidents.sqlite"), None, AlertPolicy())
        last = {}
        for i in range(3):
            frames = make_drift_frames(20_000, numeric=4, categorical=2, seed=i)
            schema = fit_schema(frames.reference, numerical=frames.numerical, categorical=frames.categorical)
            reference = schema.summarize(frames.reference)
            for model, current in (
                ("drifted", frames.current),
                ("clean", frames.reference.sample(frac=1.0, random_state=i)),
            ):
                report = detect_drift(reference, schema.summarize(current))
                key = WindowKey("demo", model, "1", i * 60_000, (i + 1) * 60_000)
                loop.on_window(WindowResult(key=key, count=len(current), drift=report.to_dict()))
                last[model] = report
        t = Table(title="last window: drift per column (statistic / threshold)")
        for col in ("column", "method", "drifted model", "clean model"):
            t.add_column(col)
        for c_d, c_c in zip(last["drifted"].columns, last["clean"].columns, strict=True):
            t.add_row(
                c_d.column,
                c_d.method,
                f"{c_d.statistic or 0:.3f} / {c_d.threshold:.2f}{' drifted' if c_d.drifted else ''}",
                f"{c_c.statistic or 0:.3f} / {c_c.threshold:.2f}{' drifted' if c_c.drifted else ''}",
            )
        console.print(t)
        incidents = loop.incidents()
        for inc in incidents:
            console.print(
                f"incident {inc.incident_id}: {inc.model_name} {inc.cause} ({inc.severity}), {inc.signals} signals"
            )
        console.print(f"{len(incidents)} incident(s) from 6 windows")
        loop.close()
