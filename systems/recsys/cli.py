"""``mlsd recsys``: train | up | bench | abtest | demo. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Real-time recommendations: two-tower + ranker, Feast, Kafka, A/B.")
console = Console()

QUALITY_MODELS = (
    "popularity",
    "trending",
    "implicit_als",
    "implicit_bpr",
    "two_tower",
    "full_pipeline",
    "lgbm_pipeline",
)


def quality_table(quality: dict[str, dict[str, float]]) -> Table:
    t = Table(title="offline quality (temporal split, full ranking)")
    for col in ("model", "recall@10", "recall@50", "ndcg@10", "coverage@10"):
        t.add_column(col)
    for name in QUALITY_MODELS:
        if name in quality:
            m = quality[name]
            t.add_row(name, *(f"{m[c]:.4f}" for c in ("recall@10", "recall@50", "ndcg@10", "coverage@10")))
    return t


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
    legacy: Annotated[bool, typer.Option(help="train the two-tower + ranker artefacts and Feast tables")] = False,
    users: Annotated[int, typer.Option(help="legacy only: train on a random slice of N users (0 = all)")] = 0,
) -> None:
    """Study every model on validation, serve the gate's winner: refit on all data, register, alias champion."""
    import logging

    from systems.recsys.settings import RecsysSettings

    logging.basicConfig(level=logging.WARNING)
    settings = RecsysSettings()
    if legacy:
        from systems.recsys.train import TrainConfig, cpu_debug, train_and_publish

        cfg = cpu_debug() if quick else TrainConfig()
        if users:
            cfg.n_users = users
        res = train_and_publish(settings, cfg)
        console.print(quality_table(res.quality))
        console.print({k: round(v, 1) for k, v in res.timings_s.items()})
        return
    version, report = train_registered(settings, dataset or settings.dataset, quick=quick)
    console.print(study_table(dataset or settings.dataset, report))
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
    """Start the broker, the stream processor and the API; Ctrl-C stops all three."""
    import threading

    import uvicorn

    from systems.common.broker import LocalBroker
    from systems.recsys.serve import create_app
    from systems.recsys.settings import RecsysSettings
    from systems.recsys.stream import run_stream_processor

    settings = RecsysSettings()
    settings.ensure_dirs()
    if settings.serve_model == "registry":
        console.print(f"API on http://{settings.host}:{port or settings.api_port}/recommend (registered champion)")
        uvicorn.run(create_app(settings), host=settings.host, port=port or settings.api_port, log_level="warning")
        return
    if not (settings.model_dir / "meta.json").exists():
        console.print("no trained model: run `mlsd recsys train --legacy` first")
        raise typer.Exit(1)
    local = None
    if broker:
        bport = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
        local = LocalBroker(port=bport, log_path=settings.recsys_dir / "broker.log")
        local.start()
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(target=run_stream_processor, args=(settings, stop), kwargs={"ready": ready}, daemon=True)
    th.start()
    if not ready.wait(60):
        console.print("the stream processor did not join its consumer group within 60 s")
        raise typer.Exit(1)
    console.print(
        f"API on http://{settings.host}:{port or settings.api_port}/recommend  events topic {settings.events_topic}"
    )
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=port or settings.api_port, log_level="warning")
    finally:
        stop.set()
        th.join(timeout=10)
        if local is not None:
            local.stop()


@app.command()
def bench(
    out: Annotated[
        Path | None, typer.Option(help="JSON report (a PNG beside it); default: systems/recsys/bench/recsys.json")
    ] = None,
    catalogue: Annotated[int, typer.Option(help="catalogue size for ANN and serving")] = 1_000_000,
    rates: Annotated[str, typer.Option(help="offered request rates")] = "50,100,200,300",
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 15.0,
    freshness_n: Annotated[int, typer.Option(help="freshness trials")] = 30,
    retrain: Annotated[bool, typer.Option(help="retrain even if a model exists")] = False,
    workers: Annotated[int, typer.Option(help="uvicorn workers for the serving run")] = 2,
    reuse_index: Annotated[bool, typer.Option(help="reuse the saved 1M-item ANN index and sweep if present")] = False,
    only: Annotated[str, typer.Option(help="comma list of quality,ann,serving,freshness,abtest ('' = all)")] = "",
    datasets: Annotated[
        str, typer.Option(help="interaction logs for the quality study (movielens-100k, movielens-1m, synthetic)")
    ] = "movielens-100k,movielens-1m",
) -> None:
    """Quality, ANN recall/QPS at scale, serving latency under open-loop load, freshness."""
    import logging

    from systems.recsys.bench import run_bench
    from systems.recsys.settings import RecsysSettings

    logging.basicConfig(level=logging.INFO)
    res = run_bench(
        RecsysSettings(),
        out,
        catalogue=catalogue,
        rates=[int(r) for r in rates.split(",")],
        duration_s=duration,
        freshness_n=freshness_n,
        retrain=retrain,
        workers=workers,
        reuse_index=reuse_index,
        only={x.strip() for x in only.split(",") if x.strip()} or None,
        quality_datasets=tuple(d.strip() for d in datasets.split(",") if d.strip()),
    )
    for name, rep in res.get("quality", {}).items():
        if isinstance(rep, dict) and "models" in rep:
            console.print(study_table(name, rep))
    if "ann" in res:
        console.print({"ann": {k: res["ann"][k] for k in ("index", "param", "value", "qps", "recall@10")}})
        serving = res["serving"].items()
        console.print({r: v["latency_ms"] for r, v in serving if isinstance(v, dict) and "latency_ms" in v})
        console.print({"freshness_ms": res["freshness_ms"]})
    if "abtest" in res:
        console.print_json(json.dumps({k: v for k, v in res["abtest"].items() if k != "provenance"}, default=float))


@app.command()
def abtest(
    experiment: Annotated[str, typer.Option(help="experiment name (salts the assignment hash)")] = "ranker-v1",
    variants: Annotated[str, typer.Option(help="rankers, control first")] = "lgbm,deep",
    requests_per_user: Annotated[int, typer.Option()] = 4,
    guardrail_ms: Annotated[float, typer.Option(help="p99 latency guardrail")] = 50.0,
    out: Annotated[Path | None, typer.Option(help="write the analysis JSON here")] = None,
    inject_latency: Annotated[str, typer.Option(help="VARIANT:MS, a deliberately slow variant (guardrail demo)")] = "",
) -> None:
    """Simulated experiment on held-out future interactions: CTR + CI, z-test, SRM, latency guardrail."""
    from systems.recsys.experiment import run_simulated_experiment
    from systems.recsys.settings import RecsysSettings

    res = run_simulated_experiment(
        RecsysSettings(),
        name=experiment,
        variants=tuple(variants.split(",")),
        requests_per_user=requests_per_user,
        guardrail_ms=guardrail_ms,
        extra_latency_ms={inject_latency.split(":")[0]: float(inject_latency.split(":")[1])}
        if inject_latency
        else None,
    )
    console.print_json(json.dumps(res, default=float))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=float))


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
    uid: Any = int(user_id) if user_id.isdigit() else user_id
    items: list[Any] = [int(x) if x.isdigit() else x for x in session.split(",") if x]
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
