"""``mlsd fraud``: simulate | train | up | replay | retrain | bench | demo.

mlsd fraud simulate                       # handbook dataset -> .mlsd/datasets/fraud/*.parquet (~1 s)
mlsd fraud train --compare                # choose on validation, score on test, register the champion
mlsd broker up && mlsd fraud up --scorers 2 --api   # scorers + label sink (+ API) until Ctrl-C
mlsd fraud replay --rate 2000 --days 1    # transactions and their late labels into Kafka
mlsd fraud retrain --if-ap-below 0.6      # retrain on matured labels, gate, move `champion`
mlsd fraud retrain --listen               # ... whenever monitoring asks (retrain.requests), until Ctrl-C
mlsd fraud bench          # systems/fraud/bench/fraud.json (+ PNG); --parts, --repeats
mlsd fraud demo                           # all of it, small, in about a minute
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from systems.common.errors import MlsdError

app = typer.Typer(no_args_is_help=True, help="Card-fraud detection: simulator, features, models, streaming scorer.")
console = Console()


def _settings():
    from systems.fraud.settings import FraudSettings

    s = FraudSettings()
    s.ensure_dirs()
    s.system_dir("fraud").mkdir(parents=True, exist_ok=True)
    return s


def _load_or_simulate(settings, preset: str = "handbook"):
    import pandas as pd

    from systems.fraud.data import handbook, simulate, small, write_dataset

    path = settings.history
    if path.exists():
        return pd.read_parquet(path)
    console.print(f"no dataset at {path}: simulating the {preset} preset")
    sim = simulate(handbook() if preset == "handbook" else small())
    write_dataset(sim, path.parent)
    return sim.transactions


def _quality_table(table: dict, title: str) -> Table:
    t = Table(title=title)
    for col in ("model", "strategy", "AUC", "AP", "CP@100", "prec@budget", "recall@budget", "fit s"):
        t.add_column(col)
    for kind, rows in table.items():
        for strat, m in rows.items():
            t.add_row(
                kind,
                strat,
                f"{m['auc']:.3f}",
                f"{m['ap']:.3f}",
                f"{m['cp@100']:.3f}",
                f"{m['precision@budget']:.3f}",
                f"{m['recall@budget']:.3f}",
                f"{m['fit_s']:.1f}",
            )
    return t


@app.command()
def simulate(
    preset: Annotated[str, typer.Option(help="handbook (5k customers, 183 days) or small")] = "handbook",
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="output dir (default <data_dir>/datasets/fraud)")] = None,
) -> None:
    """Run the Handbook transaction simulator and write parquet."""
    from dataclasses import replace

    from systems.fraud.data import handbook, simulate, small, write_dataset

    settings = _settings()
    cfg = replace(handbook() if preset == "handbook" else small(), seed=seed)
    sim = simulate(cfg)
    path = write_dataset(sim, out or settings.history.parent)
    scen = sim.transactions["scenario"].value_counts().sort_index().to_dict()
    console.print(
        f"{len(sim.transactions):,} transactions, fraud {sim.fraud_rate:.3%} "
        f"(by scenario {scen}) in {sim.seconds:.2f} s -> {path}"
    )


@app.command()
def train(
    models: Annotated[str, typer.Option(help="candidate model kinds, comma-separated")] = "logreg,xgboost,mlp",
    strategies: Annotated[
        str | None, typer.Option(help="candidate imbalance strategies (default: all that apply to each kind)")
    ] = None,
    compare: Annotated[bool, typer.Option(help="also print the validation and test tables")] = False,
) -> None:
    """Choose the model and imbalance strategy on the validation block, refit, register it as `champion`."""
    from systems.fraud.train import HANDBOOK_PUBLISHED, add_features, select_and_register, split_for_days

    settings = _settings()
    frame = add_features(_load_or_simulate(settings))
    config = split_for_days(int(frame["day"].max()) + 1)  # the handbook's days, or the same lengths at the end
    run = select_and_register(
        settings,
        frame,
        config,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        strategies=None if strategies is None else tuple(s.strip() for s in strategies.split(",") if s.strip()),
    )
    sel = run.selection
    v0, v1 = sel.config.periods()["scored"]
    t0, t1 = config.periods()["scored"]
    if compare:
        console.print(_quality_table(sel.table, f"validation days {v0}..{v1}: the choice is made here"))
        chosen = {k: {s: run.per_model_test[k]} for k, s in sel.per_model.items()}
        console.print(_quality_table(chosen, f"test days {t0}..{t1}: each model's validation-chosen strategy"))
        console.print(f"handbook published: {HANDBOOK_PUBLISHED}")
    m = run.test
    console.print(
        f"[green]✓[/] {settings.model_name} v{run.version} is champion: {sel.kind} + {sel.strategy} "
        f"(validation AP {sel.table[sel.kind][sel.strategy]['ap']:.3f}, days {v0}..{v1}); "
        f"test days {t0}..{t1}: AUC {m['auc']:.3f} AP {m['ap']:.3f} CP@100 {m['cp@100']:.3f}; "
        f"threshold for 0.1 % FPR, test FPR {m['fpr@threshold']:.4f}"
    )


@app.command()
def up(
    scorers: Annotated[int, typer.Option(help="scorer processes in the consumer group")] = 1,
    api: Annotated[bool, typer.Option(help="also serve POST /score")] = False,
    scorer_only: Annotated[bool, typer.Option(help="run one scorer in this process (compose)")] = False,
    label_sink: Annotated[bool, typer.Option(help="also consume labels into the label store")] = True,
    retrain_listener: Annotated[
        bool, typer.Option(help="also retrain when monitoring asks (consume retrain.requests)")
    ] = True,
) -> None:
    """Run the streaming side: scorer(s), the label sink, the retrain listener and optionally the API, each
    restarted if it dies, until Ctrl-C."""
    from systems.fraud.stream import main as stream_main
    from systems.fraud.supervise import run_up

    settings = _settings()
    if scorer_only:
        stream_main([] if not settings.history.exists() else ["--history", str(settings.history)])
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_up(
            settings,
            scorers=scorers,
            api=api,
            label_sink=label_sink,
            retrain_listener=retrain_listener,
            say=console.print,
            stop=stop,
        )
    except KeyboardInterrupt:
        stop.set()


@app.command()
def replay(
    rate: Annotated[float, typer.Option(help="transactions per second (0 = as fast as possible)")] = 1000.0,
    start_day: Annotated[int | None, typer.Option(help="simulation day to start from (default: settings)")] = None,
    days: Annotated[float, typer.Option(help="simulated days to send")] = 1.0,
) -> None:
    """Play simulated transactions (and their late labels) into Kafka at a fixed rate."""
    from systems.common.broker import create_topics, make_producer
    from systems.fraud.replay import day_start_s
    from systems.fraud.replay import replay as do_replay
    from systems.fraud.stream import fraud_topics

    settings = _settings()
    tx = _load_or_simulate(settings)
    create_topics(settings, fraud_topics(settings))
    start = day_start_s(tx, settings.replay_start_day if start_day is None else start_day)
    res = do_replay(settings, make_producer(settings), tx, start_s=start, end_s=start + int(days * 86_400), rate=rate)
    console.print(
        f"sent {res.transactions:,} transactions + {res.labels:,} labels in {res.seconds:.1f} s ({res.rate:,.0f} tx/s)"
    )


@app.command()
def retrain(
    if_ap_below: Annotated[float | None, typer.Option(help="only retrain if recent served AP is below this")] = None,
    kind: Annotated[str, typer.Option()] = "xgboost",
    train_days: Annotated[int, typer.Option()] = 7,
    eval_days: Annotated[int, typer.Option()] = 2,
    listen: Annotated[
        bool, typer.Option(help="retrain whenever monitoring asks (retrain.requests), until Ctrl-C")
    ] = False,
) -> None:
    """Train on matured labels; promote to `champion` only if it beats it on the same recent window."""
    from systems.fraud.feedback import recent_ap
    from systems.fraud.feedback import retrain as do_retrain

    settings = _settings()
    if listen:
        if if_ap_below is not None:
            raise MlsdError("--listen acts on monitoring's requests; --if-ap-below is for a scheduled run: use one")
        _listen(settings, {"kind": kind, "train_days": train_days, "eval_days": eval_days})
        return
    if if_ap_below is not None:
        ap = recent_ap(settings)
        if ap is not None and ap >= if_ap_below:
            console.print(f"recent AP {ap:.3f} >= {if_ap_below}: no retrain")
            return
        console.print(f"recent AP {ap} < {if_ap_below}: retraining")
    res = do_retrain(settings, kind=kind, train_days=train_days, eval_days=eval_days)
    verdict = "[green]promoted[/]" if res.promoted else "[yellow]kept the champion[/]"
    console.print(
        f"candidate v{res.candidate_version} AP {res.candidate_ap:.3f} vs champion "
        f"v{res.champion_version} AP {res.champion_ap}: {verdict}"
    )


def _listen(settings, retrain_kwargs: dict) -> None:
    """``retrain --listen``: the listener in a thread, this one waiting for Ctrl-C / SIGTERM (a clean stop
    commits what was handled; a retrain under way finishes first)."""
    from systems.fraud.feedback import RetrainOutcome, run_retrain_listener

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    colour = {"retrained": "green", "duplicate": "yellow", "ignored": "dim", "failed": "red"}

    def show(o: RetrainOutcome) -> None:
        version = f" v{o.version}" if o.version else ""
        promoted = "" if o.promoted is None else (" promoted" if o.promoted else " kept the champion")
        console.print(f"[{colour[o.status]}]{o.status}[/] {o.request_id}{version}{promoted}: {o.detail}")

    errors: list[Exception] = []

    def target() -> None:
        try:
            run_retrain_listener(
                settings,
                stop,
                on_ready=lambda: console.print(f"listening on {settings.retrain_requests_topic}; Ctrl-C stops"),
                on_outcome=show,
                retrain_kwargs=retrain_kwargs,
            )
        except Exception as exc:  # re-raised in the main thread, so the CLI exits non-zero
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=target, name="retrain-listener", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        console.print("stopping (a retrain under way finishes first)")
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


BENCH_PARTS = ("quality", "stream", "api", "fault", "poison", "chaos", "transactions")


@app.command()
def bench(
    out: Annotated[
        Path | None, typer.Option(help="JSON report (a PNG beside it); default: systems/fraud/bench/fraud.json")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="small smoke run, not numbers to publish (written under the data dir)")
    ] = False,
    repeats: Annotated[int, typer.Option(help="runs of the stream and api parts; medians are reported")] = 3,
    parts: Annotated[str, typer.Option(help=f"comma-separated subset of {','.join(BENCH_PARTS)}")] = ",".join(
        BENCH_PARTS
    ),
) -> None:
    """Simulator, quality table (once), streaming throughput/latency and /score latency (medians of
    ``--repeats`` runs), a SIGKILL fault run, poison messages, seeded chaos (kill -9 of scorer and API) and a
    probe of the broker's transactions (once each)."""
    import json

    from systems.common.errors import MlsdError
    from systems.fraud.bench import run_bench

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = set(chosen) - set(BENCH_PARTS)
    if unknown or repeats < 1:
        raise MlsdError(f"bad --parts {sorted(unknown)} or --repeats {repeats}: use {','.join(BENCH_PARTS)} and >= 1")
    result = run_bench(out, quick=quick, parts=("simulator", *chosen), repeats=repeats)
    keys = ("simulator", *BENCH_PARTS)
    console.print_json(json.dumps({k: result.get(k) for k in keys}, default=str))
    console.print(f"[green]✓[/] wrote {out or 'systems/fraud/bench/fraud.json'} and its PNG")


def demo(
    days: Annotated[int, typer.Option(help="simulated days to stream through the scorer")] = 1,
) -> None:
    """Small end to end: simulate, train + register, start a broker and a scorer, stream a day, show decisions."""
    import tempfile
    import threading as th

    from systems.common.broker import LocalBroker, create_topics, make_producer
    from systems.common.proc import free_port
    from systems.fraud.data import simulate as run_sim
    from systems.fraud.data import small, write_dataset
    from systems.fraud.replay import day_start_s
    from systems.fraud.replay import replay as do_replay
    from systems.fraud.settings import FraudSettings
    from systems.fraud.store import DecisionStore
    from systems.fraud.stream import decision_store_url, fraud_topics, run_scorer
    from systems.fraud.train import SplitConfig, add_features, train_champion

    base = FraudSettings()
    work = Path(tempfile.mkdtemp(prefix="fraud-demo-", dir=base.data_dir if base.data_dir.exists() else None))
    sim = run_sim(small())
    ds = write_dataset(sim, work / "datasets" / "fraud")
    console.print(
        f"simulated {len(sim.transactions):,} transactions ({sim.fraud_rate:.2%} fraud) in {sim.seconds:.2f} s"
    )
    with LocalBroker(free_port(), log_path=work / "tansu.log") as broker:
        settings = FraudSettings(
            data_dir=work, kafka_bootstrap=broker.bootstrap, history_path=ds / "transactions.parquet"
        )
        settings.ensure_dirs()
        settings.system_dir("fraud").mkdir(parents=True, exist_ok=True)
        _, version, m = train_champion(
            settings,
            add_features(sim.transactions),
            SplitConfig(start_day=31, train_days=9, calib_days=2, test_days=7),
            fit_params={"xgb_params": {"n_estimators": 150, "learning_rate": 0.1}},
        )
        console.print(f"champion v{version}: AUC {m['auc']:.3f} AP {m['ap']:.3f} CP@100 {m['cp@100']:.3f}")
        create_topics(settings, fraud_topics(settings))
        start = day_start_s(sim.transactions, 50)
        stop, ready = th.Event(), th.Event()
        thread = th.Thread(
            target=run_scorer,
            kwargs={
                "settings": settings,
                "history": settings.history,
                "warm_until_s": start,
                "stop": stop,
                "on_ready": lambda _: ready.set(),
            },
            daemon=True,
        )
        thread.start()
        if not ready.wait(120):  # set once the consumer group has assigned the scorer its partitions
            raise MlsdError("the scorer did not join its consumer group within 120 s")
        producer = make_producer(settings)
        res = do_replay(settings, producer, sim.transactions, start_s=start, end_s=start + days * 86_400, rate=2000)
        store = DecisionStore(decision_store_url(settings))
        deadline = time.monotonic() + 60
        while store.count()[0] < res.transactions and time.monotonic() < deadline:
            time.sleep(0.2)
        df = store.frame()
        truth = sim.transactions.set_index("tx_id").loc[df["tx_id"], "fraud"].to_numpy()
        blocked = (df["decision"] == "block").to_numpy()
        t = Table(title=f"{len(df):,} of {res.transactions:,} transactions decided through Kafka")
        for col in ("blocked", "of which fraud", "frauds caught", "p50 ms", "p99 ms"):
            t.add_column(col)
        lat = df["latency_ms"].dropna()
        t.add_row(
            str(int(blocked.sum())),
            str(int(truth[blocked].sum())),
            f"{int(truth[blocked].sum())}/{int(truth.sum())}",
            f"{lat.quantile(0.5):.1f}",
            f"{lat.quantile(0.99):.1f}",
        )
        console.print(t)
        stop.set()
        thread.join(15)
        store.close()
        producer.close()


app.command("demo")(demo)
