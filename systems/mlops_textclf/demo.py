"""The text classifier's loop end to end, in a fresh data dir (``mlsd textclf demo``, ~3 minutes on 2 cores).

1. The corpus becomes a golden set and ordered batches; the first delivery is a broken batch: quarantined.
2. The first real batch becomes version 1; a TF-IDF model trained on it must beat the majority baseline at the
   gate, and is promoted (no traffic yet, nothing to canary against).
3. The server starts (uvicorn, the broker, the registry) and takes open-loop traffic with feedback labels.
4. The remaining batches arrive; a model retrained on HEAD is gated against the champion (McNemar + margin),
   becomes challenger and goes through a canary under load: promoted when the analysis passes.
5. A deliberately broken model (wrong on a hash-chosen 10 % of texts; its positive rate barely moves) is forced
   past the gate as challenger, as a bug the golden set cannot show would be: the canary's analysis of
   feedback labels rolls it back, with no failed request.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from systems.common.errors import MlsdError
from systems.mlops_textclf.settings import TextclfSettings

console = Console()
TOKEN = "demo-admin-token"


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _gate_line(result: Any) -> str:
    m = result.mcnemar
    verdict = "[green]passed[/]" if result.passed else "[red]blocked[/]"
    peer = f"champion v{result.champion_version}" if result.champion_version else "the majority baseline"
    gain = next(c for c in result.checks if c.name == "beats_champion")
    return (
        f"gate vs {peer}: {verdict} · golden accuracy {result.golden['accuracy']:.4f} "
        f"(Δ {gain.value:+.4f}) · McNemar {m['c']} vs {m['b']} discordant, p = {m['p_value']:.3g}"
        + ("" if result.passed else f" · {'; '.join(result.reasons)}")
    )


def _rollout_line(name: str, run: Any) -> str:
    status = run.status.get("rollout") or {}
    took = (
        f" · decided {run.finished_s - run.first_challenger_s:.1f} s after the challenger's first answer"
        if run.finished_s is not None and run.first_challenger_s is not None
        else ""
    )
    return (
        f"{name}: [bold]{status.get('outcome') or status.get('phase')}[/] · {run.load.count:,} requests, "
        f"{run.load.errors} failed, p99 {run.load.latency_ms.get('p99', 0):.1f} ms · challenger answered "
        f"{run.arms.get('challenger', 0):,}{took}\n  {status.get('reason') or ''}"
    )


def run_demo(base: TextclfSettings, *, rate: float = 200.0) -> dict[str, Any]:
    import mlflow

    from systems.common import registry
    from systems.common.broker import LocalBroker
    from systems.common.http import ServerProcess
    from systems.common.proc import free_port
    from systems.mlops_textclf.gate import promote, run_gate
    from systems.mlops_textclf.ingest import (
        DatasetStore,
        load_corpus,
        load_golden,
        make_batches,
        make_broken_batch,
        write_split,
    )
    from systems.mlops_textclf.traffic import drive_rollout
    from systems.mlops_textclf.train import SabotagedClassifier, log_candidate, tfidf_default, train
    from systems.mlops_textclf.validate import admit_inbox

    work = Path(tempfile.mkdtemp(prefix="textclf-demo-", dir=base.data_dir))
    settings = TextclfSettings(**(base.model_dump() | {"data_dir": work, "inbox_dir": None, "admin_token": TOKEN}))
    settings.ensure_dirs()
    registry.configure(settings)
    out: dict[str, Any] = {"work": str(work)}

    _step("1 · batches and the validation gate")
    corpus = load_corpus(settings.corpus, base)  # fetched once into the usual data dir
    split = make_batches(corpus, settings.corpus, golden_fraction=settings.golden_fraction, seed=settings.seed)
    broken = make_broken_batch(split.batches[-1].frame, split.golden, classes=split.classes, seed=settings.seed)
    write_split(split, settings, broken)
    first = admit_inbox(settings, limit=2)
    for r in first:
        failed = f" — failed: {', '.join(c.name for c in r.report.failed)}" if r.outcome == "quarantined" else ""
        console.print(f"{r.name}: {r.outcome} ({r.rows:,} rows){failed}")
    if [r.outcome for r in first] != ["quarantined", "accepted"]:
        raise MlsdError(f"expected the broken batch quarantined and batch 1 accepted, got {[r.outcome for r in first]}")

    _step("2 · the first model")
    t = time.perf_counter()
    v1 = train(settings, tfidf_default())
    console.print(f"trained tfidf_linear on {v1.version_id} in {time.perf_counter() - t:.1f} s")
    gated = run_gate(settings, v1.run_id)
    console.print(_gate_line(gated))
    if not gated.passed:
        raise MlsdError("the first model did not pass the gate")
    promote(settings, reason="first model")
    console.print(f"champion: v{gated.registered_version}")

    golden = load_golden(settings)
    texts, labels = golden["text"].astype(str).tolist(), golden["label"].astype(str).tolist()
    with LocalBroker(free_port(), log_path=work / "broker.log") as broker:
        live = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        env = live.to_env() | {"MLSD_DATA_DIR": str(work)}
        _step("3 · serving")
        with ServerProcess("systems.mlops_textclf.serve:create_app", env=env, log_path=work / "serve.log") as server:
            console.print(f"POST {server.url}/predict · champion v{gated.registered_version}")

            _step("4 · new batches → retrain → gate → canary")
            rest = admit_inbox(settings)
            console.print(", ".join(f"{r.name}: {r.outcome}" for r in rest))
            t = time.perf_counter()
            retrained = train(settings, tfidf_default())
            head = DatasetStore.of(settings).head()
            rows = head.rows if head is not None else 0
            console.print(f"retrained on {retrained.version_id} ({rows:,} rows) in {time.perf_counter() - t:.1f} s")
            second = run_gate(settings, retrained.run_id)
            console.print(_gate_line(second))
            plan = {"strategy": "canary", "steps": [10, 50, 100], "step_s": 5, "min_samples": 100}
            plan["post_promotion_s"] = 5
            if second.passed:
                good = drive_rollout(
                    server.url,
                    live,
                    texts,
                    labels,
                    plan=plan,
                    token=TOKEN,
                    rate=rate,
                    duration_s=30,
                    wait_post_promotion=True,
                )
                console.print(_rollout_line("canary of the retrained model", good))
                out["canary_good"] = good.outcome
            else:
                console.print("the retrained model was blocked: the champion stays (no canary)")
                out["canary_good"] = "blocked at the gate"

            _step("5 · a broken model → canary → automatic rollback")
            bad = SabotagedClassifier(retrained.model, fraction=0.1, salt="demo:")
            mv = mlflow.register_model(f"runs:/{log_candidate(settings, bad)}/model", settings.model_name)
            registry.set_alias(settings.model_name, registry.CHALLENGER, mv.version)
            console.print(
                f"v{mv.version}: the retrained model made wrong on a hash-chosen 10 % of texts, as challenger"
            )
            run = drive_rollout(server.url, live, texts, labels, plan=plan, token=TOKEN, rate=rate, duration_s=30)
            console.print(_rollout_line("canary of the broken model", run))
            out["canary_bad"] = run.outcome
            if run.outcome != "rolled_back" or run.load.errors:
                raise MlsdError(f"the broken canary ended {run.outcome} with {run.load.errors} failed requests")
    champion = registry.get_alias_version(settings.model_name, registry.CHAMPION)
    console.print(f"[green]✓[/] champion v{champion}; registry, runs and data in {work}")
    out["champion"] = champion
    return out
