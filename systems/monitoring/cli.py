"""``mlsd monitoring``: up | serve | inject | report | bench | demo.

    mlsd monitoring up                     # ingest + service (:8005) + a local Prometheus and Alertmanager
    mlsd monitoring serve                  # the service alone: /metrics, /alerts webhook, /dashboard (no ingest)
    mlsd monitoring inject covariate_shift # a scenario's records into a live system's topics (Ctrl-C stops)
    mlsd monitoring report                 # the live service's series and incidents, as tables
    mlsd monitoring report --reference ref.parquet --current cur.parquet --html drift.html   # + Evidently's
    mlsd monitoring bench                  # drift vs Evidently at 1 M rows, sensitivity, ingest, join, alert
                                           #   latency, scenarios, CBPE -> systems/monitoring/bench/monitoring.json
    mlsd monitoring bench --only scenarios

Heavy imports (Evidently, the drift library, uvicorn) happen inside the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from systems.common.errors import MlsdError

app = typer.Typer(help="Monitoring: drift, delayed-label performance, alerts that ask for retraining.")
console = Console()

BENCH_SECTIONS = ("drift", "sensitivity", "ingest", "join", "alert", "scenarios", "loop")


@app.command()
def serve(port: Annotated[int, typer.Option(help="port (default: settings api_port 8005)")] = 0) -> None:
    """Run the monitoring service (metrics, Alertmanager webhook, dashboard) in the foreground."""
    import uvicorn

    from systems.monitoring.serve import create_app
    from systems.monitoring.settings import MonitoringSettings

    settings = MonitoringSettings()
    console.print(f"dashboard on http://{settings.host}:{port or settings.api_port}/dashboard")
    uvicorn.run(create_app(settings), host=settings.host, port=port or settings.api_port, log_level="warning")


def _scrape_targets(scrape: list[str]) -> list[Any]:
    from systems.monitoring.prometheus import ScrapeTarget

    out = []
    for item in scrape:
        job, sep, target = item.partition("=")
        if not sep or not job or not target:
            raise MlsdError(f"--scrape {item!r}: use job=host:port (e.g. fraud-api=127.0.0.1:8002)")
        try:
            out.append(ScrapeTarget(job, (target,)))
        except ValueError as exc:
            raise MlsdError(f"--scrape {item!r}: {exc}") from exc
    return out


@app.command()
def up(
    port: Annotated[int, typer.Option(help="port (default: settings api_port 8005)")] = 0,
    prometheus: Annotated[
        bool, typer.Option(help="start Debian's prometheus and prometheus-alertmanager as subprocesses")
    ] = True,
    scrape: Annotated[
        list[str] | None, typer.Option(help="job=host:port of another service to scrape (repeatable)")
    ] = None,
    scrape_interval_s: Annotated[float, typer.Option(help="Prometheus scrape and rule interval")] = 5.0,
) -> None:
    """The monitoring service with its ingest: predictions and labels from the broker, windows, drift,
    performance, incidents, retrain requests; plus a local Prometheus (scraping it and ``--scrape`` targets,
    with docker/alerts.yml) and Alertmanager (routing back to its webhook), until Ctrl-C."""
    import contextlib

    import uvicorn

    from systems.common.proc import port_open
    from systems.monitoring.serve import LiveMonitor
    from systems.monitoring.settings import MonitoringSettings

    settings = MonitoringSettings()
    settings.ensure_dirs()
    configured = settings.admin_token is not None
    settings = settings.with_admin_token(create=True)  # admin calls always need a token
    if not configured:
        console.print(f"admin token in {settings.admin_token_file} (set MLSD_MONITORING_ADMIN_TOKEN to choose one)")
    port = port or settings.api_port
    host, _, broker_port = settings.kafka_bootstrap.rpartition(":")
    if not port_open(host or "127.0.0.1", int(broker_port or 9092)):
        raise MlsdError(
            f"no broker at {settings.kafka_bootstrap}: start one (`mlsd broker up`) or set MLSD_KAFKA_BOOTSTRAP"
        )
    targets = _scrape_targets(scrape or [])
    with contextlib.ExitStack() as stack:
        if prometheus:
            from systems.monitoring.prometheus import LocalAlertmanager, LocalPrometheus, ScrapeTarget

            folder = settings.monitoring_dir
            am = stack.enter_context(
                LocalAlertmanager(
                    folder / "alertmanager",
                    port=settings.alertmanager_port,
                    webhook_url=f"http://{settings.host}:{port}/alerts",
                    bearer_token=settings.admin_token,
                    group_wait_s=2.0,
                    group_interval_s=30.0,
                )
            )
            prom = stack.enter_context(
                LocalPrometheus(
                    folder / "prometheus",
                    port=settings.prometheus_port,
                    targets=[ScrapeTarget("monitoring", (f"{settings.host}:{port}",)), *targets],
                    scrape_interval_s=scrape_interval_s,
                    alertmanagers=[am.address],
                )
            )
            settings = settings.model_copy(update={"prometheus_url": prom.url})
            console.print(f"Prometheus {prom.url} · Alertmanager {am.url}")
        live = LiveMonitor(settings, gc_freeze=True)  # a process that does nothing else (run_ingest)
        console.print(
            f"dashboard http://{settings.host}:{port}/dashboard · ingest {settings.predictions_topic} + "
            f"{','.join(settings.labels)} from {settings.kafka_bootstrap} · references {settings.references}"
        )
        uvicorn.run(live.create_app(), host=settings.host, port=port, log_level="warning")


@app.command()
def inject(
    scenario: Annotated[str, typer.Argument(help="covariate_shift | gradual_drift | concept_drift | ...")],
    clean_windows: Annotated[int, typer.Option(help="clean windows before the change")] = 5,
    changed_windows: Annotated[int, typer.Option(help="windows after the change")] = 5,
    rate: Annotated[float, typer.Option(help="predictions per event-time second")] = 100.0,
    speed: Annotated[float, typer.Option(help="event time runs this many times faster than the wall clock")] = 10.0,
    url: Annotated[str | None, typer.Option(help="the monitoring service, to install the reference")] = None,
    model_version: Annotated[str, typer.Option(help="the model version the records name")] = "1",
) -> None:
    """Publish a scenario's prediction records and delayed labels to the live topics, paced in event time.

    The scenario's model (``fraud/fraud-scenario``) gets its reference (a clean sample, with its AP overall and
    per segment as targets) written to the reference folder and installed in the running service first.
    Watch the dashboard: the expected incident opens about one window after the change (more for concept
    drift, which needs the labels).
    """
    import httpx

    from systems.monitoring.scenarios import SCENARIOS, inject_live
    from systems.monitoring.settings import MonitoringSettings

    if scenario not in SCENARIOS and scenario != "clean":
        raise MlsdError(f"unknown scenario {scenario!r}: use one of clean, {', '.join(SCENARIOS)}")
    settings = MonitoringSettings().with_admin_token()  # the one `mlsd monitoring up` made, if none is set
    service = url or f"http://{settings.host}:{settings.api_port}"
    try:
        httpx.get(service + "/healthz", timeout=2.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise MlsdError(f"no monitoring service at {service} ({exc}): start `mlsd monitoring up` first") from exc
    with console.status(f"{scenario}: publishing") as status:
        result = inject_live(
            settings,
            None if scenario == "clean" else scenario,
            service_url=service,
            clean_windows=clean_windows,
            changed_windows=changed_windows,
            rate_per_s=rate,
            speed=speed,
            model_version=model_version,
            progress=lambda msg: status.update(msg),
        )
    console.print(
        f"[green]✓[/] {result['predictions']:,} predictions + {result['labels']:,} labels in "
        f"{result['seconds']:.0f} s; change at event time {result['change_ts_ms']} ({result['change_wall']})"
    )


@app.command()
def report(
    url: Annotated[str | None, typer.Option(help="the monitoring service (default: settings host:api_port)")] = None,
    reference: Annotated[Path | None, typer.Option(help="reference rows (parquet or csv): with --current")] = None,
    current: Annotated[Path | None, typer.Option(help="current rows (parquet or csv)")] = None,
    html: Annotated[Path | None, typer.Option(help="write Evidently's DataDriftPreset HTML report here")] = None,
) -> None:
    """Without files: the live service's series (drift, realised/estimated metrics) and incidents as tables.
    With ``--reference`` and ``--current``: our drift verdict per column beside Evidently's on the same rows
    (and Evidently's HTML report with ``--html``)."""
    if (reference is None) != (current is None):
        raise MlsdError("--reference and --current go together")
    if reference is not None and current is not None:
        from systems.monitoring.bench import compare_files

        table = compare_files(reference, current, html)
        t = Table(title=f"drift: {current.name} against {reference.name}")
        for col in ("column", "method", "ours", "Evidently", "agree"):
            t.add_column(col)
        for row in table["columns"]:
            t.add_row(
                row["column"],
                row["method"],
                f"{row['ours_statistic']:.4g}{' drifted' if row['ours_drifted'] else ''}",
                f"{row['evidently_statistic']:.4g}{' drifted' if row['evidently_drifted'] else ''}",
                "yes" if row["agree"] else "[red]no[/]",
            )
        console.print(t)
        console.print(f"agreement {table['agreement']:.2f}" + (f"; Evidently's report: {html}" if html else ""))
        return
    import httpx

    from systems.monitoring.settings import MonitoringSettings

    settings = MonitoringSettings().with_admin_token()  # the one `mlsd monitoring up` made, if none is set
    service = url or f"http://{settings.host}:{settings.api_port}"
    try:
        summary = httpx.get(service + "/api/summary", timeout=10.0).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise MlsdError(f"no monitoring service at {service} ({exc}): start `mlsd monitoring up` first") from exc
    t = Table(title=f"series at {service}")
    for col in ("system / model / version", "window records", "drift share", "realised", "estimated", "p99 ms"):
        t.add_column(col)
    for s_ in summary.get("series", []):
        realised = ", ".join(
            f"{m['name']} {m['value']:.3f}" for m in s_.get("realised", []) if m.get("value") is not None
        )
        estimated = ", ".join(
            f"{m['name']} {m['value']:.3f}" for m in s_.get("estimated", []) if m.get("value") is not None
        )
        share = s_.get("drift_share")
        p99 = s_.get("latency_ms_p99")
        t.add_row(
            f"{s_['system']} / {s_['model_name']} / {s_['model_version']}",
            f"{s_['count']:,}",
            "-" if share is None else f"{share:.2f}",
            realised or "-",
            estimated or "-",
            "-" if p99 is None else f"{p99:.1f}",
        )
    console.print(t)
    i = Table(title="incidents")
    for col in ("opened", "system / model", "cause", "severity", "status", "signals", "retrain", "recovered"):
        i.add_column(col)
    for inc in summary.get("incidents", []):
        i.add_row(
            time.strftime("%H:%M:%S", time.localtime(inc["opened_ts_ms"] / 1000)),
            f"{inc['system']} / {inc['model_name']}",
            inc["cause"],
            inc["severity"],
            inc["status"],
            str(inc["signals"]),
            inc.get("retrained_version") or ("requested" if inc.get("retrain_request_id") else "-"),
            {True: "yes", False: "no", None: "-"}[inc.get("recovered")],
        )
    console.print(i)


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
    ingest_records: Annotated[int, typer.Option(help="records per ingest run")] = 300_000,
    repeats: Annotated[int, typer.Option(help="runs of the ingest and alert-latency parts (medians reported)")] = 3,
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
    if "ingest" in wanted:
        from systems.monitoring.ingest import bench_ingest

        runs = []
        for i in range(repeats):
            with console.status(f"ingest: {ingest_records:,} records through a broker into one consumer ({i + 1})"):
                runs.append(bench_ingest(n=ingest_records, fast=True, gc_freeze=True, seed=i))
        rates = sorted(r["records_per_s"] for r in runs)
        per_cpu = sorted(r["records_per_cpu_s"] or 0.0 for r in runs)
        section = {
            **runs[-1],
            "records_per_s": rates[len(rates) // 2],
            "runs_records_per_s": rates,
            "records_per_cpu_s": per_cpu[len(per_cpu) // 2],  # what one core delivers, whatever the steal
            "runs_steal_pct": [r["steal_pct"] for r in runs],
        }
        section["cpu_us_per_record"] = round(1e6 / section["records_per_cpu_s"], 1) if per_cpu[0] else None
        section["target_records_per_s"] = 50_000
        report.section("ingest", section)
        console.print(f"ingest: {section['records_per_s']:,.0f} records/s (median of {repeats}; runs {rates})")
    if "join" in wanted:
        from systems.monitoring.join import bench_join_memory

        with console.status("label join: memory per million pending predictions"):
            join = report.section("join", bench_join_memory())
        console.print(f"join: {join['mb_per_million']:.0f} MB per million pending predictions")
    if "alert" in wanted:
        from systems.monitoring.scenarios import bench_alert_latency

        with console.status("alert latency: live broker + ingest, first drifted record -> incident (~1 min/run)"):
            alert = report.section("alert", bench_alert_latency(repeats=repeats))
        console.print(
            f"alert latency {alert['latency_s']:.1f} s (runs {alert['runs_s']}; target {alert['target_s']} s)"
        )
    if "scenarios" in wanted:
        from rich.progress import Progress

        from systems.monitoring.scenarios import SCENARIOS, bench_scenarios

        with Progress(console=console) as bar:
            tasks = {n: bar.add_task(n, total=1) for n in SCENARIOS}

            def step(name: str, done: int, total: int) -> None:
                bar.update(tasks[name], completed=done, total=total)

            result = bench_scenarios(progress=step)
        report.section("scenarios", result["scenarios"])
        report.section("cbpe", result["cbpe"] | {"config": result["config"]})
        t = Table(title="injected scenarios (event-time detection delay; false alarms over clean windows)")
        for col in ("scenario", "cause", "ours: delay s", "false alarms", "p-value peer: delay", "false alarms"):
            t.add_column(col)
        for name, r in result["scenarios"].items():
            t.add_row(
                name,
                r["expected_cause"],
                str(r["detection_delay_s"]),
                f"{r['false_alarm_rate']:.1%}",
                str(r["pvalue_peer"]["detection_delay_s"]),
                f"{r['pvalue_peer']['false_alarm_rate']:.1%}",
            )
        console.print(t)
        console.print(f"CBPE: AP estimate vs realised, MAE {result['cbpe']['mae']}")
    if "loop" in wanted:
        from systems.monitoring.demo import LoopConfig, run_loop, summarize

        with console.status("the loop: drift injected into fraud -> alert -> retrain -> recovery (~3 min)"):
            cfg = LoopConfig()
            loop = report.section("loop", summarize(run_loop(cfg, say=lambda _line: None), cfg))
        console.print(
            f"loop: incident {loop['performance_incident_days_after_drift']} simulated days after the drift, "
            f"retrained at +{loop['retrained_days_after_drift']}, recovered at +{loop['recovered_days_after_drift']} "
            f"({loop['seconds']:.0f} s wall)"
        )
    report.plot(lambda png: plot_report(report.data, png))
    console.print(f"[green]✓[/] wrote {report.path} and its PNG")


@app.command()
def demo(
    synthetic: Annotated[
        bool, typer.Option(help="only the 10-second synthetic drift/alert demo (no fraud, no broker)")
    ] = False,
) -> None:
    """Drift injected into fraud → alert → retrain request → new champion → recovery (~3 min, real parts).

    With ``--synthetic``: a drifted and a clean model through drift detection and the alert loop (~10 s).
    """
    if synthetic:
        _synthetic_demo()
        return
    from systems.monitoring.demo import run_loop

    result = run_loop(say=lambda line: console.print(line, highlight=False))
    t = Table(title=f"fraud windows (one simulated day each): realised AP vs the reference {result.reference_ap:.3f}")
    for col in ("day", "version", "predictions", "labelled", "realised AP [95 % CI]", "estimated AP", "drift share"):
        t.add_column(col, justify="right")
    for w in result.windows:
        ci = "-" if w["ap"] is None else f"{w['ap']:.3f} [{w['ap_low']:.3f}, {w['ap_high']:.3f}]"
        est = "-" if w["estimated_ap"] is None else f"{w['estimated_ap']:.3f}"
        share = "-" if w["drift_share"] is None else f"{w['drift_share']:.2f}"
        t.add_row(str(w["day"]), w["version"], f"{w['count']:,}", f"{w['labelled']:,}", ci, est, share)
    console.print(t)
    from systems.monitoring.demo import LoopConfig, summarize

    s = summarize(result, LoopConfig())
    console.print(
        f"after the drift: performance incident +{s['performance_incident_days_after_drift']} simulated days "
        f"({s['performance_incident_wall_s_after_drift']} s), retrained +{s['retrained_days_after_drift']} "
        f"({s['retrained_wall_s_after_drift']} s), recovered +{s['recovered_days_after_drift']} "
        f"({s['recovered_wall_s_after_drift']} s); AP {s['ap_before_drift']} → {s['ap_champion_after_drift']} → "
        f"{s['ap_retrained']}"
    )
    verdict = {True: "[green]recovered[/]", False: "[red]not recovered[/]", None: "[yellow]no verdict yet[/]"}
    console.print(f"loop {verdict[result.recovered]} in {result.seconds:.0f} s")
    if result.recovered is not True:
        raise MlsdError("the loop demo ended without a recovered incident (see the timeline above)")


def _synthetic_demo() -> None:
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
