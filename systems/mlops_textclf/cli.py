"""``mlsd textclf``: batches | ingest | validate | versions | resubmit | bench | demo.

    mlsd textclf batches              # the corpus -> golden set + ordered batches + a broken batch in the inbox
    mlsd textclf ingest               # every inbox file through the gate: a new dataset version, or quarantine
    mlsd textclf ingest --limit 1     # ... only the next one (one delivery per training cycle)
    mlsd textclf validate FILE        # the gate's report on one file, changing nothing (exit 1 if it fails)
    mlsd textclf versions             # every dataset version: parent, batches, rows, class balance
    mlsd textclf resubmit NAME        # a fixed file from quarantine back into the inbox
    mlsd textclf bench                # gate + versioning cost per batch -> bench/mlops_textclf.json
    mlsd textclf demo                 # batches, ingest, versions in a fresh folder (~30 s)

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
) -> None:
    """Every inbox file through the gate: accepted into a new dataset version, or quarantined with a report."""
    from systems.mlops_textclf.validate import admit_inbox, inbox_files

    settings = _settings()
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
def demo() -> None:
    """The configured corpus (reviews by default) cut into batches, each through the gate, then the versions."""
    import tempfile

    from systems.mlops_textclf.ingest import DatasetStore, load_version

    base = _settings()
    work = Path(tempfile.mkdtemp(prefix="textclf-demo-", dir=base.data_dir))
    settings, split, results, _ = _pipeline(work)
    console.print(_split_table(split, None))
    console.print(_results_table(results))
    for r in results:
        if r.outcome == "quarantined":
            console.print(r.report.summary(), highlight=False)
    store = DatasetStore.of(settings)
    head = store.head()
    console.print(_versions_table(store.versions(), head.version_id if head else None, split.classes))
    if head is None or not any(r.outcome == "quarantined" for r in results):
        raise MlsdError("the demo expected versions and one quarantined batch; see the tables above")
    first = store.versions()[0]
    rows = load_version(first.version_id, settings)
    console.print(
        f"version {first.version_id} still loads unchanged ({len(rows):,} rows, digest verified); files in {work}"
    )


@app.command()
def bench(
    out: Annotated[
        Path | None, typer.Option(help="JSON report; default: systems/mlops_textclf/bench/mlops_textclf.json")
    ] = None,
) -> None:
    """Seconds per batch through the gate (read, validate, version, move) and to load + verify each version."""
    import tempfile

    from systems.common.bench import BenchReport
    from systems.mlops_textclf.ingest import DatasetStore

    base = _settings()
    with tempfile.TemporaryDirectory(prefix="textclf-bench-", dir=base.data_dir) as tmp:
        settings, split, results, seconds = _pipeline(Path(tmp))
        store = DatasetStore.of(settings)
        loads = []
        for m in store.versions():
            t = time.perf_counter()
            store.load(m.version_id)
            loads.append({"version": m.version_id, "rows": m.rows, "load_verify_s": round(time.perf_counter() - t, 3)})
    per_batch: list[dict[str, Any]] = [
        {"file": r.name, "outcome": r.outcome, "rows": r.rows, "admit_s": round(s, 3), "rows_per_s": round(r.rows / s)}
        for r, s in zip(results, seconds, strict=True)
    ]
    result = {"corpus": settings.corpus.name, "split": split.summary(), "batches": per_batch, "versions": loads}
    BenchReport("mlops_textclf", out=out).section("ingest", result)
    table = Table(title="gate + versioning per batch")
    for col in ("file", "outcome", "rows", "admit s", "rows/s"):
        table.add_column(col, justify="left" if col in ("file", "outcome") else "right")
    for b in per_batch:
        table.add_row(b["file"], b["outcome"], f"{b['rows']:,}", f"{b['admit_s']:.2f}", f"{b['rows_per_s']:,}")
    console.print(table)
    console.print(f"[green]✓[/] wrote {out or 'systems/mlops_textclf/bench/mlops_textclf.json'}")
