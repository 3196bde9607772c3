"""``mlsd recsys``: train | up | bench | abtest | demo. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    no_args_is_help=True, help="Real-time recommendations: tuned peers + LightGBM ranker, Feast, Kafka, A/B."
)
console = Console()


def study_table(name: str, rep: dict[str, Any]) -> Table:
    """One dataset's quality study: every model's test metrics with 95 % CIs, the gate's pick marked."""
    t = Table(title=f"{name}: test, {rep['test_users']:,} users (95% CI); served = {rep['served']['name']}")
    for col in ("model", "val ndcg@10", "ndcg@10", "recall@10", "recall@50", "mrr@50", "coverage@10"):
        t.add_column(col)
    for model, m in rep["models"].items():
        ci = m["ci95"]
        t.add_row(
            model + (" *" if model == rep["served"]["name"] else ""),
            f"{m['val_ndcg@10']:.4f}",
            *(f"{m[c]:.4f} [{ci[c][0]:.3f}, {ci[c][1]:.3f}]" for c in ("ndcg@10", "recall@10", "recall@50", "mrr@50")),
            f"{m['coverage@10']:.3f}",
        )
    return t


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="interaction log: movielens-100k, movielens-1m or synthetic")] = "",
    quick: Annotated[bool, typer.Option(help="the CI preset: small grids, few epochs")] = False,
) -> None:
    """Study every model on validation, serve the gate's winner: refit on all data, register, alias champion."""
    import logging

    from systems.recsys.dataset import ADAPTERS
    from systems.recsys.settings import RecsysSettings

    logging.basicConfig(level=logging.WARNING)
    settings = RecsysSettings()
    name = dataset or settings.dataset
    if name not in ADAPTERS:
        console.print(f"unknown dataset {name!r}; known: {', '.join(ADAPTERS)}")
        raise typer.Exit(2)
    version, report = train_registered(settings, name, quick=quick)
    console.print(study_table(name, report))
    console.print(
        f"served: [bold]{report['served']['name']}[/] (gate: best validation NDCG@10), "
        f"registered as {settings.model_name} version {version} (alias champion)"
    )


def train_registered(settings: Any, dataset: str, *, quick: bool) -> tuple[str, dict[str, Any]]:
    """Study → gate → refit the winner on the whole log → MLflow (alias champion)."""
    import torch
    from threadpoolctl import threadpool_limits

    from systems.recsys.dataset import load_log
    from systems.recsys.served import fit_served, register_served
    from systems.recsys.study import StudyConfig, ci_preset

    settings.ensure_dirs()
    torch.set_num_threads(1)
    with threadpool_limits(1), console.status(f"studying {dataset}: peers, ranker, gate (minutes)"):
        model, report = fit_served(load_log(dataset, settings), ci_preset() if quick else StudyConfig())
        version = register_served(
            model, report, settings.recsys_dir / "served", name=settings.model_name, settings=settings
        )
    return version, report


@app.command()
def up(
    port: Annotated[int, typer.Option(help="API port (default: settings api_port 8001)")] = 0,
    broker: Annotated[bool, typer.Option(help="start a local tansu broker (off when Kafka runs elsewhere)")] = True,
) -> None:
    """The broker, the API and (inside it) the stream processor; Ctrl-C stops all of them.

    A broker already answering on the port (one left by a killed run, or ``mlsd broker up``) is reused; a broker
    this command starts dies with it, even on ``kill -9``.
    """
    import uvicorn

    from systems.common.broker import BrokerError, LocalBroker, wait_broker_ready
    from systems.common.proc import port_open
    from systems.recsys.serve import create_app
    from systems.recsys.settings import RecsysSettings

    settings = RecsysSettings(stream_in_api=True)
    settings.ensure_dirs()
    local = None
    if broker:
        host, bport = settings.kafka_bootstrap.rsplit(":", 1)
        if port_open(host, int(bport)):
            try:
                wait_broker_ready(settings.kafka_bootstrap, timeout_s=5)
            except BrokerError:
                console.print(f"port {bport} is in use by something that is not a Kafka broker: free it first")
                raise typer.Exit(1) from None
            console.print(f"reusing the Kafka broker already on {settings.kafka_bootstrap}")
        else:
            local = LocalBroker(port=int(bport), log_path=settings.recsys_dir / "broker.log", die_with_parent=True)
            local.start()
    api_port = port or settings.api_port
    console.print(f"API on http://{settings.host}:{api_port}/recommend  events topic {settings.events_topic}")
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=api_port, log_level="warning")
    finally:
        if local is not None:
            local.stop()


@app.command()
def bench(
    out: Annotated[
        Path | None, typer.Option(help="JSON report (a PNG beside it); default: systems/recsys/bench/recsys.json")
    ] = None,
    only: Annotated[
        str, typer.Option(help="comma list of quality,abtest,serving,freshness,poison,chaos,fuzz ('' = all)")
    ] = "",
    rates: Annotated[
        str, typer.Option(help="offered request rates of the serving section")
    ] = "100,200,300,400,500,600",
    duration: Annotated[float, typer.Option(help="seconds per rate and run")] = 10.0,
    repeats: Annotated[int, typer.Option(help="runs per rate (the median is reported)")] = 3,
    workers: Annotated[int, typer.Option(help="uvicorn workers of the serving run")] = 2,
    freshness_n: Annotated[int, typer.Option(help="freshness trials")] = 30,
    datasets: Annotated[
        str, typer.Option(help="interaction logs for the quality study (movielens-100k, movielens-1m, synthetic)")
    ] = "movielens-100k,movielens-1m",
) -> None:
    """Quality (+ A/B), serving latency under open-loop load next to the no-op ceiling, freshness, faults."""
    import logging

    from systems.recsys.bench import run_bench
    from systems.recsys.settings import RecsysSettings

    logging.basicConfig(level=logging.WARNING)
    known = {"quality", "abtest", "serving", "freshness", "poison", "chaos", "fuzz"}
    picked = {x.strip() for x in only.split(",") if x.strip()}
    if picked - known:
        console.print(f"unknown sections {sorted(picked - known)}; known: {', '.join(sorted(known))}")
        raise typer.Exit(2)
    res = run_bench(
        RecsysSettings(),
        out,
        rates=tuple(int(r) for r in rates.split(",")),
        duration_s=duration,
        repeats=repeats,
        workers=workers,
        freshness_n=freshness_n,
        only=picked or None,
        quality_datasets=tuple(d.strip() for d in datasets.split(",") if d.strip()),
    )
    for name, rep in res.get("quality", {}).items():
        if isinstance(rep, dict) and "models" in rep:
            console.print(study_table(name, rep))
    if "serving" in res:
        sv = res["serving"]
        rows = {
            r: (v["latency_ms"]["p99"], v["extra"].get("server_cpu_ms_per_request"))
            for r, v in sv.items()
            if r.isdigit()
        }
        console.print({"p99 ms, server CPU ms per request": rows, "max_rps_p99_50ms": sv["max_rps_p99_50ms"]})
    for key in ("freshness_ms", "poison", "chaos", "fuzz"):
        if key in res:
            console.print({key: {k: v for k, v in res[key].items() if k != "provenance"}})


@app.command()
def abtest(
    experiment: Annotated[str, typer.Option(help="experiment name (salts the assignment hash)")] = "ranker-v1",
    variants: Annotated[str, typer.Option(help="arms, control first: pipeline or a peer's name")] = "pipeline,covisit",
    dataset: Annotated[str, typer.Option(help="interaction log whose test stage is the world")] = "movielens-100k",
    quick: Annotated[bool, typer.Option(help="the study's CI preset (minutes less, a weaker model)")] = False,
    requests_per_user: Annotated[int, typer.Option()] = 4,
    guardrail_ms: Annotated[float, typer.Option(help="p99 latency guardrail")] = 50.0,
    out: Annotated[Path | None, typer.Option(help="write the analysis JSON here")] = None,
    inject_latency: Annotated[str, typer.Option(help="ARM:MS, a deliberately slow arm (guardrail demo)")] = "",
) -> None:
    """Simulated experiment on the study's test stage: CTR + CI, z-test, SRM, latency guardrail."""
    import torch
    from threadpoolctl import threadpool_limits

    from systems.recsys.bench import bench_abtest
    from systems.recsys.dataset import load_log
    from systems.recsys.settings import RecsysSettings
    from systems.recsys.study import StudyConfig, ci_preset, run_study

    settings = RecsysSettings()
    settings.ensure_dirs()
    extra = None
    if inject_latency:
        arm, _, ms = inject_latency.partition(":")
        try:
            extra = {arm: float(ms)}
        except ValueError:
            console.print(f"--inject-latency wants ARM:MS, got {inject_latency!r}")
            raise typer.Exit(2) from None
    torch.set_num_threads(1)
    with threadpool_limits(1), console.status(f"studying {dataset} (the experiment's world)"):
        res = run_study(load_log(dataset, settings), ci_preset() if quick else StudyConfig())
    analysis = bench_abtest(
        settings,
        res,
        name=experiment,
        variants=tuple(v.strip() for v in variants.split(",")),
        requests_per_user=requests_per_user,
        guardrail_ms=guardrail_ms,
        extra_latency_ms=extra,
    )
    console.print_json(json.dumps(analysis, default=float))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(analysis, indent=2, default=float))


@app.command()
def demo(
    user_id: Annotated[str, typer.Option(help="user to recommend for (a public id of the dataset)")] = "1",
    session: Annotated[str, typer.Option(help="comma-separated item ids an anonymous shopper browses")] = "50",
    k: Annotated[int, typer.Option()] = 5,
) -> None:
    """Train (quick preset) if no model is registered, then recommend for a known user, an anonymous session and
    an unknown user — through the registered champion, as the API does."""
    from systems.recsys.served import load_champion
    from systems.recsys.settings import RecsysSettings

    settings = RecsysSettings()
    try:
        model = load_champion(settings.model_name, settings)
    except LookupError:
        console.print(f"no registered model: training the quick preset on {settings.dataset} ...")
        train_registered(settings, settings.dataset, quick=True)
        model = load_champion(settings.model_name, settings)
    uid: Any = int(user_id) if user_id.isascii() and user_id.isdigit() else user_id
    items: list[Any] = [int(x) if x.isascii() and x.isdigit() else x for x in session.split(",") if x]
    browsing = ", ".join(model.titles[i] for i in model.items.indices(items) if i >= 0) or session
    for label, kwargs in (
        (f"user {user_id}", {"user_id": uid}),
        (f"anonymous, browsing {browsing}", {"user_id": None, "session_ids": items}),
        ("unknown user, no history", {"user_id": "nobody-knows-me"}),
    ):
        ans = model.recommend(k=k, **kwargs)
        t = Table(title=f"{label} — {model.kind}, version {model.version}, history {ans.history_len}")
        for col in ("item_id", "title", "score", "source"):
            t.add_column(col)
        for i, title, sc in zip(ans.item_ids, ans.titles, ans.scores, strict=True):
            t.add_row(str(i), title, f"{sc:.3f}", ans.source)
        console.print(t)
