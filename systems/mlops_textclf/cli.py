"""``mlsd textclf``: the text classifier's pipeline, one command per stage.

    mlsd textclf batches              # the corpus -> golden set + ordered batches + a broken batch in the inbox
    mlsd textclf ingest               # every inbox file through the gate: a new dataset version, or quarantine
    mlsd textclf ingest --limit 1     # ... only the next one (one delivery per training cycle)
    mlsd textclf validate FILE        # the gate's report on one file, changing nothing (exit 1 if it fails)
    mlsd textclf versions             # every dataset version: parent, batches, rows, class balance
    mlsd textclf resubmit NAME        # a fixed file from quarantine back into the inbox
    mlsd textclf train                # TF-IDF + logistic regression on HEAD -> an MLflow run (golden + newest batch)
    mlsd textclf train --model embedding --version ID   # MiniLM embeddings + logistic regression on version ID
    mlsd textclf evaluate RUN [--against RUN2]          # a run's model on golden + newest batch; McNemar vs RUN2
    mlsd textclf gate RUN [--out F]   # checks + McNemar vs champion; registers the version, alias challenger if passed
    mlsd textclf promote | rollback   # challenger -> champion (old one kept as previous) | champion -> previous
    mlsd textclf pipeline [--preset ci] [--watch [--every-s N] [--listen]]   # ingest -> train -> gate, DVC-cached
    mlsd textclf serve                # POST /predict from champion; shadow / canary / blue-green via the admin API
    mlsd textclf rollout --strategy canary   # start one on the running server and follow its analysis
    mlsd textclf bench                # gate + versioning cost per batch -> bench/mlops_textclf.json
    mlsd textclf demo                 # the whole loop in a fresh folder, canary and rollback included (~3 min)

The corpus and the gate's thresholds come from ``TextclfSettings`` (``MLSD_TEXTCLF_*``); pandas, pandera and
scipy are imported inside the commands, so ``mlsd --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from systems.common.errors import MlsdError

if TYPE_CHECKING:
    from systems.mlops_textclf.ingest import CorpusSplit, VersionManifest
    from systems.mlops_textclf.settings import TextclfSettings
    from systems.mlops_textclf.validate import AdmitResult

app = typer.Typer(
    no_args_is_help=True,
    help="Text classifier MLOps pipeline: versioned data batches behind a validation gate with quarantine.",
)
console = Console()

OUTCOME_STYLE = {"accepted": "green", "already-ingested": "cyan", "quarantined": "red"}


def _settings() -> TextclfSettings:
    from systems.mlops_textclf.settings import TextclfSettings

    settings = TextclfSettings()
    settings.ensure_dirs()
    return settings


def _share(balance: dict[str, Any], classes: list[str]) -> str:
    return " / ".join(f"{balance['counts'][c]:,}" for c in classes) + f"  ({balance['shares'][classes[-1]]:.1%})"


def _split_table(split: CorpusSplit, broken: dict[str, int] | None) -> Table:
    classes = split.classes
    t = Table(title=f"batches of {split.source_rows:,} source rows (dropped: {split.dropped})")
    for col in ("part", "slices", "rows", f"{' / '.join(classes)}  ({classes[-1]} share)"):
        t.add_column(col, justify="right" if col == "rows" else "left")
    for row in split.summary():
        t.add_row(row["name"], ", ".join(row["slices"]), f"{row['rows']:,}", _share(row, classes))
    if broken:
        t.add_row("broken", "faulty copy of the last batch", "", ", ".join(f"{k} {v}" for k, v in broken.items()))
    return t


def _make_split(settings: TextclfSettings, corpus_settings: TextclfSettings | None = None) -> CorpusSplit:
    from systems.mlops_textclf.ingest import load_corpus, make_batches

    corpus = load_corpus(settings.corpus, corpus_settings or settings)
    return make_batches(corpus, settings.corpus, golden_fraction=settings.golden_fraction, seed=settings.seed)


def _write(settings: TextclfSettings, split: CorpusSplit, *, broken: bool) -> dict[str, int] | None:
    from systems.mlops_textclf.ingest import make_broken_batch, write_split

    bad = None
    if broken:
        last = split.batches[-1].frame
        bad = make_broken_batch(last, split.golden, classes=split.classes, seed=settings.seed)
    write_split(split, settings, bad)
    return bad.faults if bad is not None else None


@app.command()
def batches(
    broken: Annotated[bool, typer.Option(help="also write a deliberately broken batch the gate must reject")] = True,
) -> None:
    """Cut the configured corpus into the golden test set (dataset folder) and ordered batches (inbox)."""
    settings = _settings()
    split = _make_split(settings)
    faults = _write(settings, split, broken=broken)
    console.print(_split_table(split, faults))
    console.print(f"golden set {settings.golden_path} · batches in {settings.inbox}; next: `mlsd textclf ingest`")


def _results_table(results: list[AdmitResult]) -> Table:
    t = Table(title="ingest")
    for col in ("file", "outcome", "rows", "version", "failed checks", "warnings"):
        t.add_column(col, justify="right" if col == "rows" else "left")
    for r in results:
        style = OUTCOME_STYLE[r.outcome]
        t.add_row(
            r.name,
            f"[{style}]{r.outcome}[/]",
            f"{r.rows:,}",
            r.version_id or "-",
            ", ".join(c.name for c in r.report.failed) or "-",
            ", ".join(c.name for c in r.report.warnings) or "-",
        )
    return t


@app.command()
def ingest(
    limit: Annotated[int | None, typer.Option(help="process at most this many inbox files (name order)")] = None,
    from_topic: Annotated[
        bool, typer.Option(help="instead: cut MLSD_TEXTCLF_LABELED_TOPIC into inbox batch files, until Ctrl-C")
    ] = False,
    publish: Annotated[
        Path | None, typer.Option(help="instead: send this batch file's rows to the labelled topic, one each")
    ] = None,
) -> None:
    """Every inbox file through the gate: accepted into a new dataset version, or quarantined with a report."""
    from systems.mlops_textclf.validate import admit_inbox, inbox_files

    settings = _settings()
    if publish is not None:
        from systems.mlops_textclf.ingest import publish_labeled, read_batch

        sent = publish_labeled(settings, read_batch(publish))
        console.print(f"sent {sent:,} examples to {settings.labeled_topic}")
        return
    if from_topic:
        _collect(settings)
        return
    ignored = [p.name for p in settings.inbox.iterdir() if p.is_file() and p not in inbox_files(settings)]
    if ignored:
        console.print(f"[yellow]ignored (not .parquet/.csv):[/] {', '.join(ignored)}")
    results = admit_inbox(settings, limit=limit)
    if not results:
        console.print(f"inbox {settings.inbox} is empty: `mlsd textclf batches` writes the corpus's batches there")
        return
    console.print(_results_table(results))
    for r in results:
        if r.outcome == "quarantined":
            console.print(r.report.summary(), highlight=False)
            console.print(f"  report: {r.path}.report.txt · fix it, then `mlsd textclf resubmit {r.path.name}`")


def _collect(settings: TextclfSettings) -> None:
    import signal
    import threading

    from systems.mlops_textclf.ingest import collect_labeled

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(
        f"collecting {settings.labeled_topic} into {settings.inbox} (a file per {settings.collect_batch_rows} "
        f"examples or {settings.collect_batch_s:g} s) · Ctrl-C stops"
    )
    try:
        stats = collect_labeled(settings, stop)
    except KeyboardInterrupt:
        return
    console.print(
        f"{len(stats.files)} file(s), {stats.examples:,} examples, {stats.dead_letters:,} dead letter(s), "
        f"{stats.skipped:,} already in a file"
    )


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="a batch file (.parquet or .csv)")]) -> None:
    """The gate's report on FILE against the latest version; nothing moves. Exit code 1 if a check fails."""
    from systems.mlops_textclf.ingest import DatasetStore, load_golden, read_batch
    from systems.mlops_textclf.validate import validate_batch

    if not file.is_file():
        raise MlsdError(f"no file {file}")
    settings = _settings()
    store = DatasetStore.of(settings)
    head = store.head()
    report = validate_batch(
        read_batch(file),
        settings=settings,
        golden=load_golden(settings),
        reference=store.load(head.version_id) if head else None,
        reference_version=head.version_id if head else None,
        name=file.name,
    )
    console.print(report.summary(), highlight=False)
    if not report.accepted:
        raise typer.Exit(1)


def _versions_table(manifests: list[VersionManifest], head: str | None, classes: list[str]) -> Table:
    t = Table(title="dataset versions (oldest first)")
    for col in (
        "version",
        "parent",
        "batches (last)",
        "rows",
        f"{' / '.join(classes)}  ({classes[-1]} share)",
        "created",
    ):
        t.add_column(col, justify="right" if col == "rows" else "left")
    for m in manifests:
        mark = " (HEAD)" if m.version_id == head else ""
        names = f"{len(m.batches)}: …{m.batches[-1].name}" if len(m.batches) > 1 else m.batches[0].name
        t.add_row(
            m.version_id + mark, m.parent or "-", names, f"{m.rows:,}", _share(m.class_balance, classes), m.created_at
        )
    return t


@app.command()
def versions() -> None:
    """Every dataset version with its parent, batches, rows, class balance and creation time."""
    from systems.mlops_textclf.ingest import DatasetStore

    settings = _settings()
    store = DatasetStore.of(settings)
    manifests = store.versions()
    if not manifests:
        console.print(f"no dataset versions in {settings.store_dir}: `mlsd textclf ingest` creates them")
        return
    head = store.head()
    console.print(_versions_table(manifests, head.version_id if head else None, settings.corpus.class_names))


@app.command()
def resubmit(name: Annotated[str, typer.Argument(help="file name in the quarantine folder")]) -> None:
    """Move a fixed file from quarantine back to the inbox (its old report goes to quarantine/history)."""
    from systems.mlops_textclf.validate import resubmit as do_resubmit

    target = do_resubmit(name, _settings())
    console.print(f"[green]✓[/] {name} is back in {target.parent}; `mlsd textclf ingest` runs the gate again")


def _pipeline(work: Path) -> tuple[TextclfSettings, CorpusSplit, list[AdmitResult], list[float]]:
    """Batches of the configured corpus into a fresh data dir ``work``, then each through the gate (timed)."""
    from systems.mlops_textclf.settings import TextclfSettings
    from systems.mlops_textclf.validate import admit, inbox_files

    base = _settings()  # the corpus is fetched (once) into the usual data dir
    settings = TextclfSettings(**(base.model_dump() | {"data_dir": work, "inbox_dir": None}))
    settings.ensure_dirs()
    split = _make_split(settings, corpus_settings=base)
    _write(settings, split, broken=True)
    import pandera.pandas  # noqa: F401  imported before the clock starts: the first batch should not pay it
    import scipy.stats  # noqa: F401

    from systems.mlops_textclf.ingest import DatasetStore, load_golden

    results, seconds = [], []
    store, golden = DatasetStore.of(settings), load_golden(settings)
    for path in inbox_files(settings):
        t = time.perf_counter()
        results.append(admit(path, settings, store=store, golden=golden))
        seconds.append(time.perf_counter() - t)
    return settings, split, results, seconds


@app.command()
def demo(rate: Annotated[float, typer.Option(help="requests per second during the canaries")] = 200.0) -> None:
    """The loop: broken batch quarantined, first model, serving, new batches → retrain → gate → canary → promote,
    then a broken model → canary → automatic rollback (~3 minutes)."""
    from systems.mlops_textclf.demo import run_demo

    run_demo(_settings(), rate=rate)


@app.command()
def bench(
    out: Annotated[
        Path | None, typer.Option(help="JSON report; default: systems/mlops_textclf/bench/mlops_textclf.json")
    ] = None,
    only: Annotated[
        str, typer.Option(help="comma-separated sections: ingest, quality, gate, rollout, serving, pipeline")
    ] = "ingest,quality,gate,rollout,serving,pipeline",
) -> None:
    """The gate per batch, quality per model and data version, gate error rates, rollouts under load, serving."""
    import tempfile

    from systems.common.bench import BenchReport
    from systems.mlops_textclf import bench as sections
    from systems.mlops_textclf.ingest import DatasetStore
    from systems.mlops_textclf.train import tfidf_default
    from systems.mlops_textclf.train import train as do_train

    wanted = {s.strip() for s in only.split(",") if s.strip()}
    unknown = wanted - {"ingest", "quality", "gate", "rollout", "serving", "pipeline"}
    if unknown:
        raise MlsdError(f"unknown bench sections {sorted(unknown)}")
    base = _settings()
    report = BenchReport("mlops_textclf", out=out)
    with tempfile.TemporaryDirectory(prefix="textclf-bench-", dir=base.data_dir) as tmp:
        settings, split, results, seconds = _pipeline(Path(tmp))
        store = DatasetStore.of(settings)
        loads = []
        for m in store.versions():
            t = time.perf_counter()
            store.load(m.version_id)
            loads.append({"version": m.version_id, "rows": m.rows, "load_verify_s": round(time.perf_counter() - t, 3)})
        quality = _bench_quality(settings, store) if "quality" in wanted else {}
        if wanted & {"gate", "rollout", "serving"}:
            deployed = do_train(settings, tfidf_default()).model  # the HEAD model a pipeline would deploy
            if "gate" in wanted:
                report.section("gate", sections.bench_gate(settings, deployed))
            if "rollout" in wanted:
                report.section("rollout", sections.bench_rollout(settings, deployed))
            if "serving" in wanted:
                report.section("serving", sections.bench_serving(settings, deployed))
        if "pipeline" in wanted:
            measured = sections.bench_pipeline(base, Path(tmp) / "pipeline")
            report.section("pipeline", measured | sections.pipeline_totals(measured, report.get("rollout")))
    per_batch: list[dict[str, Any]] = [
        {"file": r.name, "outcome": r.outcome, "rows": r.rows, "admit_s": round(s, 3), "rows_per_s": round(r.rows / s)}
        for r, s in zip(results, seconds, strict=True)
    ]
    result = {"corpus": settings.corpus.name, "split": split.summary(), "batches": per_batch, "versions": loads}
    if "ingest" in wanted:
        report.section("ingest", result)
    if quality:
        report.section("quality", quality)
        qt = Table(title="golden-set quality per model and data version (the headline: HEAD)")
        for col in ("model", "version", "batches", "rows", "accuracy", "macro-F1", "ROC AUC", "ECE", "train s"):
            qt.add_column(col, justify="left" if col in ("model", "version") else "right")
        for kind, q in quality.items():
            for v in q.get("by_version", []):  # (``intervals`` is not a model)
                g = v["golden"]
                qt.add_row(
                    kind,
                    v["version"],
                    str(v["batches"]),
                    f"{v['rows']:,}",
                    *(f"{g[k]:.4f}" for k in ("accuracy", "macro_f1", "roc_auc", "ece")),
                    f"{v['train_s']:.1f}",
                )
        console.print(qt)
    report.plot(lambda png: _plot_bench(report.data, png))
    sections.plot(report.data, report.path.with_name("mlops_textclf_rollout.png"))
    table = Table(title="gate + versioning per batch")
    for col in ("file", "outcome", "rows", "admit s", "rows/s"):
        table.add_column(col, justify="left" if col in ("file", "outcome") else "right")
    for b in per_batch:
        table.add_row(b["file"], b["outcome"], f"{b['rows']:,}", f"{b['admit_s']:.2f}", f"{b['rows_per_s']:,}")
    console.print(table)
    console.print(f"[green]✓[/] wrote {out or 'systems/mlops_textclf/bench/mlops_textclf.json'}")


def _plot_bench(data: dict[str, Any], png: Path) -> None:
    """Left: golden-set macro-F1 per data version, one line per candidate. Right: seconds through the gate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, q in (data.get("quality") or {}).items():
        if not isinstance(q, dict) or "by_version" not in q:
            continue
        rows = [v["rows"] for v in q["by_version"]]
        left.plot(rows, [v["golden"]["macro_f1"] for v in q["by_version"]], marker="o", label=kind)
    left.set(xlabel="training rows (data version)", ylabel="golden macro-F1", title="quality per data version")
    left.legend()
    batches = (data.get("ingest") or {}).get("batches", [])
    right.barh(
        [b["file"].removesuffix(".parquet") for b in batches],
        [b["admit_s"] for b in batches],
        color=["tab:red" if b["outcome"] == "quarantined" else "tab:green" for b in batches],
    )
    right.set(xlabel="seconds through the gate", title="validation gate (red: quarantined)")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _bench_quality(settings: Any, store: Any) -> dict[str, Any]:
    """Both candidates (default presets) trained on every version in turn, scored on the golden set in one run:
    what each new batch buys, and the headline (the HEAD version's model, the one a pipeline would deploy).
    The embedding candidate encodes each text once (the cache under the run's data dir), so its first version
    pays the encoding and later ones mostly reuse it."""
    from systems.mlops_textclf.bench import quality_intervals
    from systems.mlops_textclf.train import preset as make_preset
    from systems.mlops_textclf.train import train as do_train

    out: dict[str, Any] = {}
    heads: dict[str, Any] = {}
    for kind in ("tfidf_linear", "embedding"):
        by_version = []
        for m in store.versions():
            with console.status(f"{kind} on version {m.version_id} ({m.rows:,} rows)"):
                r = do_train(settings, make_preset(kind, "default"), version=m.version_id, log_model=False)
            heads[kind] = r.model
            golden = {k: r.metrics[f"golden_{k}"] for k in ("accuracy", "macro_f1", "roc_auc", "ece")}
            by_version.append(
                {
                    "version": m.version_id,
                    "batches": len(m.batches),
                    "rows": m.rows,
                    "golden": golden,
                    "newest": {k: r.metrics.get(f"newest_{k}") for k in ("accuracy", "macro_f1")},
                    "train_s": r.metrics["train_s"],
                    "latency_single_p99_us": r.metrics.get("latency_single_p99_us"),
                    "behaviour_passed": bool(r.metrics.get("behaviour_passed")),
                }
            )
        head = by_version[-1]
        out[kind] = {**head["golden"], "train_s": head["train_s"], "version": head["version"], "by_version": by_version}
    with console.status("bootstrap intervals on the golden set"):
        out["intervals"] = quality_intervals(settings, heads)  # the HEAD models: the headline's uncertainty
    return out


def _metrics_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    """One row per evaluation set: n, accuracy, macro-F1, ROC AUC, ECE."""
    t = Table(title=title)
    for col in ("set", "scope", "rows", "accuracy", "macro-F1", "ROC AUC", "ECE (10 bins)"):
        t.add_column(col, justify="left" if col in ("set", "scope") else "right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    for name, r in rows.items():
        m = r["metrics"]
        t.add_row(
            name,
            r.get("scope", ""),
            f"{int(m['n']):,}" if m.get("n") is not None else "-",
            fmt(m.get("accuracy")),
            fmt(m.get("macro_f1")),
            fmt(m.get("roc_auc")),
            fmt(m.get("ece")),
        )
    return t


def _print_evaluation(evaluation: Any) -> None:
    """Slices, latency and behavioural results of a ``ModelEvaluation``."""
    golden = evaluation.golden
    slices = Table(title=f"golden set per slice (min {_min_slice_rows()} rows)")
    for col in ("slice", "rows", "accuracy", "macro-F1", "ROC AUC"):
        slices.add_column(col, justify="left" if col == "slice" else "right")
    for name, m in golden.slices.items():
        if m.get("too_few"):
            slices.add_row(name, f"{m['n']:,}", "too few", "", "")
        else:
            auc = "-" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
            slices.add_row(name, f"{int(m['n']):,}", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", auc)
    console.print(slices)
    lat = evaluation.latency
    console.print(
        f"latency: {lat.get('batch_us_per_row', float('nan')):,.0f} µs/row in a batch of "
        f"{int(lat.get('batch_rows', 0))}; single row p50 {lat.get('single_p50_us', float('nan')):,.0f} µs, "
        f"p99 {lat.get('single_p99_us', float('nan')):,.0f} µs"
    )
    for r in evaluation.behaviour.results:
        mark = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        console.print(f"behaviour {r.kind}: {mark} ({r.n - len(r.failures)}/{r.n})")
        for f in r.failures:
            console.print(f"  - {f}", highlight=False)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a pipeline stage's output is never half-written)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def _min_slice_rows() -> int:
    from systems.mlops_textclf.evaluate import MIN_SLICE_ROWS

    return MIN_SLICE_ROWS


@app.command()
def train(
    model: Annotated[str, typer.Option(help="candidate: tfidf_linear or embedding")] = "tfidf_linear",
    version: Annotated[str | None, typer.Option(help="dataset version id or unique prefix; default: HEAD")] = None,
    preset: Annotated[str, typer.Option(help="config preset: default or ci (tiny and fast)")] = "default",
    out: Annotated[Path | None, typer.Option(help="write {run_id, version_id, kind, metrics} as JSON here")] = None,
) -> None:
    """Train a candidate on a dataset version, evaluate it, and record it all in one MLflow run."""
    from systems.mlops_textclf.ingest import DatasetStore
    from systems.mlops_textclf.train import preset as make_preset
    from systems.mlops_textclf.train import train as do_train

    settings = _settings()
    config = make_preset(model, preset)
    if DatasetStore.of(settings).head() is None:
        raise MlsdError("no dataset version yet: run mlsd textclf ingest")
    result = do_train(settings, config, version=version)
    e = result.evaluation
    m = result.metrics
    rows = {
        "validation": {
            "scope": "held out from the version's rows",
            "metrics": {"accuracy": m["val_accuracy"], "macro_f1": m["val_macro_f1"], "roc_auc": m["val_roc_auc"]},
        },
        e.golden.name: e.golden.as_dict(),
        e.newest.name: e.newest.as_dict(),
    }
    console.print(_metrics_table(f"{config.kind} on version {result.version_id}", rows))
    _print_evaluation(e)
    console.print(
        f"[green]✓[/] run {result.run_id} · C={result.model.params['selected_c']} · "
        f"threshold {result.model.threshold:.3f} · trained in {m['train_s']:.1f} s"
    )
    if out is not None:
        write_json(out, {"run_id": result.run_id, "version_id": result.version_id, "kind": config.kind, "metrics": m})


@app.command()
def evaluate(
    run: Annotated[str, typer.Argument(help="MLflow run id of a `mlsd textclf train` run")],
    against: Annotated[str | None, typer.Option(help="another run id: McNemar's test on the golden set")] = None,
    version: Annotated[str | None, typer.Option(help="whose newest batch to score; default: HEAD")] = None,
) -> None:
    """A trained model on the golden set and the newest batch, its behaviour and latency; McNemar vs --against."""
    from systems.mlops_textclf.evaluate import evaluate_model, paired_mcnemar
    from systems.mlops_textclf.ingest import DatasetStore
    from systems.mlops_textclf.train import load_run_model

    settings = _settings()
    store = DatasetStore.of(settings)
    head = store.head()
    if head is None:
        raise MlsdError("no dataset version yet: run mlsd textclf ingest")
    version_id = store.resolve(version) if version else head.version_id
    model, tags = load_run_model(run, settings)
    e = evaluate_model(model, settings=settings, version=version_id)
    title = f"run {run} ({tags.get('model_kind', '?')}, trained on {tags.get('data_version', '?')})"
    console.print(_metrics_table(title, {e.golden.name: e.golden.as_dict(), e.newest.name: e.newest.as_dict()}))
    _print_evaluation(e)
    if against:
        other, _ = load_run_model(against, settings)
        o = evaluate_model(other, settings=settings, version=version_id)
        test = paired_mcnemar(o.golden, e.golden)
        better = "better" if test.challenger_better else "worse" if test.c < test.b else "equal"
        console.print(
            f"McNemar ({test.method}) vs {against} on the golden set: {run} right where {against} is wrong "
            f"{test.c}×, the reverse {test.b}× → {better}, p = {test.p_value:.4g}"
        )


def _gate_table(result: Any) -> Table:
    peer = f"v{result.champion_version}" if result.champion_version else "the majority-class baseline"
    table = Table(title=f"gate of run {result.run_id} vs {peer}")
    for col in ("check", "passed", "value", "limit", "detail"):
        table.add_column(col, justify="right" if col in ("value", "limit") else "left")
    for c in result.checks:
        mark = "[green]✓[/]" if c.passed else "[red]✗[/]"
        value = "" if c.value is None else f"{c.value:.4g}"
        limit = "" if c.limit is None else f"{c.limit:.4g}"
        table.add_row(c.name, mark, value, limit, c.detail)
    return table


@app.command()
def gate(
    run: Annotated[str, typer.Argument(help="MLflow run id of a `mlsd textclf train` run")],
    out: Annotated[Path | None, typer.Option(help="write the gate result as JSON here")] = None,
    request_id: Annotated[str | None, typer.Option(help="the retrain request this candidate answers")] = None,
) -> None:
    """Gate a trained run against the champion: every check, McNemar's margin; register it, alias challenger."""
    from systems.mlops_textclf.gate import run_gate

    result = run_gate(_settings(), run, request_id=request_id)
    console.print(_gate_table(result))
    verdict = "[green]passed[/]: alias challenger" if result.passed else "[red]blocked[/]"
    console.print(f"version {result.registered_version} {verdict} · {result.seconds:.1f} s")
    if out is not None:
        write_json(out, result.as_dict())


@app.command()
def promote(
    first: Annotated[
        bool, typer.Option(help="only if there is no champion yet (a deployment's first model); else do nothing")
    ] = False,
) -> None:
    """Move champion to the challenger (the old champion stays as previous), without an online rollout."""
    from systems.common import registry
    from systems.mlops_textclf.gate import promote as do_promote

    settings = _settings()
    if first:
        registry.configure(settings)
        current = registry.get_alias_version(settings.model_name, registry.CHAMPION)
        if current is not None:
            console.print(f"champion v{current} already serves: nothing to do (--first)")
            return
    new, old = do_promote(settings, reason="mlsd textclf promote" + (" --first" if first else ""))
    console.print(f"[green]✓[/] champion v{new}" + (f" (previous v{old})" if old else ""))


@app.command()
def rollback() -> None:
    """Move champion back to previous."""
    from systems.mlops_textclf.gate import rollback as do_rollback

    restored, dropped = do_rollback(_settings(), reason="mlsd textclf rollback")
    console.print(f"[green]✓[/] champion v{restored} again (v{dropped} rolled back)")


# ---- pipeline (continuous training as a DVC pipeline: systems/mlops_textclf/pipeline.py)
@app.command()
def pipeline(
    model: Annotated[str, typer.Option(help="candidate: tfidf_linear or embedding")] = "tfidf_linear",
    preset: Annotated[str, typer.Option(help="config preset: default or ci (tiny and fast)")] = "default",
    watch: Annotated[bool, typer.Option(help="keep running: on new data, --every-s, --listen; until Ctrl-C")] = False,
    every_s: Annotated[float | None, typer.Option(help="with --watch: also a full run every N seconds")] = None,
    listen: Annotated[bool, typer.Option(help="with --watch: also act on retrain requests (retrain.requests)")] = False,
    out: Annotated[Path | None, typer.Option(help="write the run's result (stages, outputs) as JSON here")] = None,
) -> None:
    """ingest -> train -> gate as a DVC pipeline: a stage runs only if its data, code or params changed."""
    import signal
    import threading

    from systems.mlops_textclf.pipeline import PipelineResult, run_pipeline, stages_table
    from systems.mlops_textclf.pipeline import watch as do_watch

    settings = _settings()

    def show(result: PipelineResult) -> None:
        console.print(stages_table(result))
        if out is not None:
            write_json(out, result.as_dict())

    if not watch:
        if every_s is not None or listen:
            raise MlsdError("--every-s and --listen need --watch")
        show(run_pipeline(settings, model=model, preset=preset))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def outcome(o: Any) -> None:
        console.print(f"retrain request {o.request_id}: {o.status} {o.detail}")

    console.print(f"watching {settings.inbox}" + (f", every {every_s:g} s" if every_s else "") + " · Ctrl-C stops")
    try:
        do_watch(
            settings,
            stop,
            model=model,
            preset=preset,
            every_s=every_s,
            listen=listen,
            on_result=show,
            on_error=lambda trigger, exc: console.print(f"[red]pipeline ({trigger}) failed:[/] {exc}"),
            listener_kwargs={"on_outcome": outcome},
        )
    except KeyboardInterrupt:
        stop.set()


# ---- end pipeline


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="default: MLSD_TEXTCLF_PORT (8004)")] = None,
) -> None:
    """POST /predict from the registry's champion; rollouts through the admin API (needs the admin token)."""
    import uvicorn

    from systems.mlops_textclf.serve import create_app

    settings = _settings()
    uvicorn.run(create_app(settings), host=settings.host, port=port or settings.port, log_level="warning")


@app.command()
def rollout(
    strategy: Annotated[str, typer.Option(help="shadow, canary or bluegreen")] = "canary",
    url: Annotated[str | None, typer.Option(help="the serving API; default http://HOST:PORT")] = None,
    steps: Annotated[str, typer.Option(help="canary percents, comma-separated")] = "5,25,50,100",
    step_s: Annotated[float, typer.Option(help="least seconds per step")] = 30.0,
    feedback: Annotated[bool, typer.Option(help="judge quality on feedback labels too")] = True,
) -> None:
    """Start a rollout of the registry's challenger on a running `mlsd textclf serve` and follow it to its end."""
    import httpx

    from systems.mlops_textclf.rollout import RolloutPlan

    settings = _settings()
    if settings.admin_token is None:
        raise MlsdError("set MLSD_TEXTCLF_ADMIN_TOKEN (the server's admin token) to start a rollout")
    plan = RolloutPlan(
        strategy=strategy,
        steps=[float(s) for s in steps.split(",")],
        step_s=step_s,
        feedback=feedback,
    )
    base = url or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    with httpx.Client(base_url=base, timeout=30.0) as client:
        r = client.post("/admin/rollout", json=plan.model_dump(), headers=headers)
        if r.status_code >= 300:
            raise MlsdError(f"rollout refused ({r.status_code}): {r.json()['error']['message']}")
        seen = 0
        while True:
            status = client.get("/rollout").json()
            for event in status["events"][seen:]:
                console.print(f"{event['event']:>14} {event['percent'] or 0:>5.0f} %  {event['reason']}")
            seen = len(status["events"])
            if (status.get("rollout") or {}).get("phase") == "done":
                console.print(f"outcome: {status['rollout']['outcome']} · champion v{status['champion']}")
                return
            time.sleep(1.0)
