"""Ingest: a corpus cut into ordered data batches, and a dataset that grows by immutable, content-addressed versions.

    corpus ──to_examples──▶ examples ──make_batches──▶ golden test set (fixed) + batch 01, 02, … (domain shift)
    inbox/NAME.parquet ──(validate.admit: the gate)──▶ DatasetStore.append ──▶ version v_k = v_{k-1} + batch
    textclf.labeled ──collect_labeled──▶ inbox/t-<topic>-p<P>-<first>-<last>.parquet (then as above)

**The task.** The default corpus (Women's E-Commerce Clothing Reviews) becomes binary sentiment: rating 4–5 is
``positive``, 1–2 ``negative``, and rating 3 is excluded. A 3 is the ambiguous middle (the reviewer neither clearly
liked nor disliked the item, so either label would be noise), and a binary task keeps the later stages simple and
exact: one ROC AUC, and McNemar's test on paired right/wrong decisions when a challenger is compared with the
champion on the golden set. The classes are imbalanced (about 12 % negative on this corpus); :func:`class_balance`
reports it per batch, per version and for the golden set, and the gate bounds it. Title and review text are joined
into one text. Nothing below knows this corpus: columns, label rule, slices and batch plan come from
:class:`~systems.mlops_textclf.settings.CorpusConfig`, and the tests run on a synthetic table with other column
names.

**The batches.** A continuously trained classifier sees its data arrive in batches, and what makes retraining
necessary is that later batches differ from earlier ones. The default plan therefore orders batches by department
(Tops, then Dresses, then Bottoms, then Intimate + Jackets + the rest, the smallest departments together): each
batch is a domain shift (a review of jeans is not worded like a review of a blouse) with real, unsimulated labels.
Before any batch exists, a **golden test set** is held out: a seeded, stratified sample of every (label, slice)
stratum, ranked inside its stratum by a hash of (seed, example id), so the choice does not depend on row order. It
covers every department from the start, so a model trained on early batches is measured on the shift it will meet,
and it never changes: models from different versions are compared on the same rows. Exact duplicates (by normalised
text) are dropped before the split, so one text can never sit on both sides of it. :func:`make_broken_batch` builds
the batch the gate must reject: empty texts, labels outside the domain and missing, copies of golden rows and
duplicated rows, each counted. It is a corrupted copy of the last batch, delivered first (``00-broken``): the gate
needs no dataset to reject it, only the contract and the golden set.

**Versions.** A version is the ordered list of rows of every batch accepted so far. Its id is the sha256 of a
canonical serialisation of those rows (a format header, then one JSON array per row in a fixed column order,
UTF-8), so the id *is* the content: the same rows give the same id in any run, on any machine, and re-ingesting
a batch that is already in the dataset creates nothing. Row order is part of the content on purpose: a trainer
that shuffles with a seed sees exactly the same sequence for the same version. Storage is git-like: each
accepted batch is written once as ``objects/<batch digest>.parquet``, and a version is a manifest
``versions/<id>.json`` (parent, batches with their row offsets, row counts, class balance, slice mix, the
golden set's digest, validation warnings, created time) that lists its objects; nothing is ever rewritten, and
:func:`load_version` re-hashes what it reads, so a tampered or truncated object is an error, not a silent change.

**MLflow and DVC.** The version id is ours; the tools record it. ``mlflow.data.from_pandas(df).digest`` is an
8-hex-digit md5 over the first 10,000 rows (plus the row count and column names): two versions that differ after
row 10,000 collide, and 32 bits is not an identity. So :func:`to_mlflow_dataset` hands MLflow a dataset
*carrying* our sha256, and ``mlflow.log_input`` in the training stage records the exact version each model was
trained on (MLflow's dataset tracking, with a digest that is an identity). DVC runs the pipeline
(``pipeline.py``), and its ``dvc.lock`` records the content hashes of the manifests each ingest saw and of the
``head.json`` each training run consumed. The store itself is not ``dvc add``: DVC versions data through a git
work tree (a version is a commit of a ``.dvc`` file), while here versions are made by the pipeline, possibly many
a day, in a data dir that is not a git repository. Objects by content hash plus a manifest per version is DVC's
own storage model without the git half; ``dvc push`` of ``objects/`` is what to add to share versions through a
remote.

**From a topic.** Examples can also arrive one at a time on ``textclf.labeled`` (:func:`collect_labeled`, ``mlsd
textclf ingest --from-topic``): they are cut into batch files in the inbox and meet the same gate (see the
section at the end of this module).

One writer at a time: ``append`` is atomic per file (write, then rename) but takes no lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from systems.common.errors import MlsdError
from systems.mlops_textclf.settings import REST, CorpusConfig, TextclfSettings

EXAMPLE_COLUMNS = ("example_id", "text", "label", "slice")
"""The data contract of a batch file and of every version: four string columns, in this order."""
ROWS_FORMAT = "mlsd.textclf.rows/1"
"""Named in the first line of the canonical serialisation: a new format gives new digests, never silently."""
BATCH_SUFFIXES = (".parquet", ".csv")
MISSING_SLICE = "(missing)"
log = logging.getLogger(__name__)

BROKEN_NAME = "00-broken.parquet"
"""The broken batch sorts first: it is rejected on the golden set and the contract alone, before any version."""


class IngestError(MlsdError):
    """A corpus, batch file or dataset version that cannot be used; the message says which and why."""


# ------------------------------------------------------------------------------------------ text keys


_NON_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, punctuation and whitespace runs collapsed to one space: the form two copies of
    one review share even when one was re-typed with other capitals, spacing or quotes."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(text: str) -> str:
    """A 128-bit hash of :func:`normalise_text`, for duplicate and leakage checks."""
    return hashlib.blake2b(normalise_text(text).encode(), digest_size=16).hexdigest()


def text_keys(texts: pd.Series) -> pd.Series:
    return texts.fillna("").astype(str).map(text_key)


# --------------------------------------------------------------------------------------- content digest


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """The contract's columns, in order, with a fresh 0..n-1 index (raises if one is missing)."""
    missing = [c for c in EXAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise IngestError(f"rows lack column(s) {', '.join(missing)}; the contract is {', '.join(EXAMPLE_COLUMNS)}")
    return frame.loc[:, list(EXAMPLE_COLUMNS)].reset_index(drop=True)


def serialise_rows(frame: pd.DataFrame) -> Iterator[bytes]:
    """The canonical serialisation: a header line, then one compact JSON array per row (missing -> null)."""
    yield json.dumps({"format": ROWS_FORMAT, "columns": list(EXAMPLE_COLUMNS)}, separators=(",", ":")).encode()
    yield b"\n"
    rows = canonical(frame).astype(object)
    for values in rows.where(rows.notna(), None).itertuples(index=False, name=None):
        yield json.dumps(list(values), ensure_ascii=False, separators=(",", ":")).encode()
        yield b"\n"


def rows_digest(frame: pd.DataFrame) -> str:
    """sha256 (hex) of :func:`serialise_rows`: equal exactly when the rows and their order are equal."""
    digest = hashlib.sha256()
    for chunk in serialise_rows(frame):
        digest.update(chunk)
    return digest.hexdigest()


def version_id_of(digest: str) -> str:
    """A version's id: the first 16 hex digits (64 bits) of its rows' digest; the manifest keeps all 64."""
    return digest[:16]


# ---------------------------------------------------------------------------------------- the corpus


def load_corpus(config: CorpusConfig, settings: TextclfSettings | None = None) -> pd.DataFrame:
    """The source table: a dataset of ``systems.common.data`` (fetched and cached there) or a parquet/csv file."""
    from systems.common.data import LOADERS

    if config.source in LOADERS:
        loaded = LOADERS[config.source](settings)
        if not isinstance(loaded, pd.DataFrame):
            raise IngestError(f"dataset {config.source!r} is not one table; use a file or another dataset")
        return loaded
    path = Path(config.source)
    if not path.is_file():
        raise IngestError(
            f"corpus source {config.source!r} is neither a known dataset ({', '.join(LOADERS)}) nor a file"
        )
    return read_table(path)


def read_table(path: Path) -> pd.DataFrame:
    """A .parquet or .csv file; CSV cells are read as text exactly (an empty cell is "", not missing)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    raise IngestError(f"{path.name}: unsupported file type {suffix or '(none)'}; use {' or '.join(BATCH_SUFFIXES)}")


def _labels(raw: pd.Series, config: CorpusConfig) -> pd.Series:
    """Class name per row, or None for a row the task excludes (a value outside the label rule, or missing)."""
    raw = raw.astype(object)
    if config.label_map is None:
        classes = set(config.class_names)
        return raw.map(lambda v: str(v) if pd.notna(v) and str(v) in classes else None).astype(object)
    lookup: dict[Any, str] = {}
    for name, values in config.label_map.items():
        for value in values:
            lookup[value] = name
            lookup[str(value)] = name
    return raw.map(lambda v: lookup.get(v, lookup.get(str(v))) if pd.notna(v) else None).astype(object)


def to_examples(corpus: pd.DataFrame, config: CorpusConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Source rows -> contract rows ``(example_id, text, label, slice)`` in ``order_column`` order, without
    excluded labels, empty texts and repeated texts; returns the rows and how many were dropped for each reason.
    """
    wanted = [*config.text_columns, config.label_column]
    wanted += [c for c in (config.slice_column, config.order_column, config.id_column) if c is not None]
    missing = [c for c in dict.fromkeys(wanted) if c not in corpus.columns]
    if missing:
        raise IngestError(
            f"corpus {config.name!r} has no column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, corpus.columns))}"
        )
    frame = corpus.reset_index(drop=True)
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    if config.order_column is not None:
        frame = frame.sort_values(config.order_column, kind="stable")
        position = position.loc[frame.index]
    if config.id_column is not None:
        ids = frame[config.id_column].astype(str)
    else:
        ids = position.map(lambda p: f"{config.name}:{p}")
    parts = [frame[c].fillna("").astype(str).str.strip() for c in config.text_columns]
    text = parts[0]
    for part in parts[1:]:
        text = text.where(part == "", text.where(text == "", text + "\n") + part)
    label = _labels(frame[config.label_column], config)
    if label.notna().sum() == 0:
        seen = ", ".join(map(repr, frame[config.label_column].dropna().unique()[:10]))
        raise IngestError(f"the label rule matched no row of column {config.label_column!r} (its values: {seen})")
    if config.slice_column is not None:
        raw_slice = frame[config.slice_column].astype(object)
        slices = raw_slice.where(raw_slice.notna(), MISSING_SLICE).astype(str)
    else:
        slices = pd.Series("all", index=frame.index)
    examples = pd.DataFrame({"example_id": ids, "text": text, "label": label, "slice": slices})
    dropped = {"excluded_label": int(label.isna().sum())}
    examples = examples[label.notna()]
    empty = examples["text"] == ""
    dropped["empty_text"] = int(empty.sum())
    examples = examples[~empty]
    repeated = text_keys(examples["text"]).duplicated(keep="first")
    dropped["duplicate_text"] = int(repeated.sum())
    examples = examples[~repeated]
    if examples["example_id"].duplicated().any():
        raise IngestError(f"id column {config.id_column!r} repeats ids; ids must be unique per row")
    return examples.reset_index(drop=True), dropped


def class_balance(labels: pd.Series, classes: Sequence[str]) -> dict[str, Any]:
    """Counts and shares of each class (in ``classes`` order) among the rows whose label is in the domain."""
    counts = {c: int((labels == c).sum()) for c in classes}
    total = sum(counts.values())
    return {"counts": counts, "shares": {c: round(n / total, 4) if total else 0.0 for c, n in counts.items()}}


# ----------------------------------------------------------------------------------------- the batches


@dataclass(frozen=True)
class Batch:
    name: str
    """The file stem in the inbox: ``NN-<slices>``; the NN prefix is the delivery order."""
    frame: pd.DataFrame
    slices: tuple[str, ...]


@dataclass(frozen=True)
class CorpusSplit:
    """The golden test set and the ordered batches made from one corpus (no row in two of them)."""

    golden: pd.DataFrame
    batches: list[Batch]
    classes: list[str]
    source_rows: int
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One row per part: name, slices, rows, class counts and shares."""
        rows = []
        for name, frame, slices in [
            ("golden", self.golden, tuple(sorted(self.golden["slice"].unique()))),
            *[(b.name, b.frame, b.slices) for b in self.batches],
        ]:
            rows.append(
                {"name": name, "slices": list(slices), "rows": len(frame)} | class_balance(frame["label"], self.classes)
            )
        return rows


def _slug(value: str) -> str:
    return "rest" if value == REST else re.sub(r"[^a-z0-9]+", "-", value.casefold()).strip("-") or "x"


def _unit_hash(seed: int, ids: pd.Series) -> np.ndarray:
    """A uniform number in [0, 1) per id, fixed by (seed, id) alone."""
    return ids.map(
        lambda i: int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64
    ).to_numpy()


def golden_mask(examples: pd.DataFrame, *, fraction: float, seed: int) -> pd.Series:
    """True for the golden test rows: in every (label, slice) stratum, the ``round(fraction * n)`` rows whose
    seeded id hash is smallest. Stratified so the golden set has the corpus's class balance and slice mix."""
    order = pd.Series(_unit_hash(seed, examples["example_id"]), index=examples.index)
    rank = order.groupby([examples["label"], examples["slice"]]).rank(method="first")
    size = examples.groupby(["label", "slice"])["example_id"].transform("size")
    return rank <= np.floor(fraction * size + 0.5)


def make_batches(corpus: pd.DataFrame, config: CorpusConfig, *, golden_fraction: float, seed: int) -> CorpusSplit:
    """The golden test set plus the ordered batches of ``config.batch_plan`` (or ``n_batches`` chunks in order).

    Deterministic: the same corpus, config and seed give the same rows in the same order (so the same digests).
    """
    examples, dropped = to_examples(corpus, config)
    if config.batch_plan is not None:
        present = set(examples["slice"])
        named = {v for group in config.batch_plan for v in group if v != REST}
        unknown = sorted(named - present)
        if unknown:
            raise IngestError(
                f"batch plan names slice value(s) {unknown} that column {config.slice_column!r} does not hold "
                f"(it holds {sorted(present)})"
            )
        group_of = {v: i for i, group in enumerate(config.batch_plan) for v in group}
        rest = group_of.get(REST, -1)
        group = examples["slice"].map(lambda v: group_of.get(v, rest))
        dropped["unplanned_slice"] = int((group < 0).sum())
        examples, group = examples[group >= 0], group[group >= 0]
        golden = golden_mask(examples, fraction=golden_fraction, seed=seed)
        parts = [(tuple(g), examples[(group == i) & ~golden]) for i, g in enumerate(config.batch_plan)]
    else:
        golden = golden_mask(examples, fraction=golden_fraction, seed=seed)
        rest_rows = examples[~golden]
        chunks = np.array_split(np.arange(len(rest_rows)), config.n_batches)
        parts = [(("part",), rest_rows.iloc[chunk]) for chunk in chunks]
    batches = []
    for i, (slices, frame) in enumerate(parts, start=1):
        if frame.empty:
            raise IngestError(f"batch {i} ({', '.join(slices)}) has no rows; change the batch plan or n_batches")
        name = f"{i:02d}-" + "-".join(_slug(s) for s in slices)
        batches.append(Batch(name=name, frame=frame.reset_index(drop=True), slices=slices))
    return CorpusSplit(
        golden=examples[golden].reset_index(drop=True),
        batches=batches,
        classes=config.class_names,
        source_rows=len(corpus),
        dropped=dropped,
    )


@dataclass(frozen=True)
class BrokenBatch:
    frame: pd.DataFrame
    faults: dict[str, int]
    """What was injected, in rows: empty_text, label_out_of_domain, label_missing, golden_leak, duplicate_rows."""


def make_broken_batch(
    batch: pd.DataFrame, golden: pd.DataFrame, *, classes: Sequence[str], seed: int, n_each: int | None = None
) -> BrokenBatch:
    """A copy of ``batch`` with ``n_each`` rows of each fault the gate must catch (default 2 % of the rows each).

    Empty or whitespace-only texts; a label outside ``classes``; a missing label; golden rows re-sent under new
    ids with changed case and spacing (found only by the normalised-text hash); rows of the batch repeated.
    Dropping the rows the report names gives back a clean subset of ``batch``.
    """
    rng = np.random.default_rng(seed)
    base = canonical(batch).astype(object)
    n = n_each if n_each is not None else max(1, round(0.02 * len(base)))
    if 4 * n > len(base) or n > len(golden):
        raise IngestError(f"a broken batch with {n} rows per fault needs {4 * n} batch rows and {n} golden rows")
    picked = rng.choice(len(base), size=4 * n, replace=False)
    empty, outside, missing, repeated = np.split(picked, 4)
    base.loc[empty, "text"] = ["" if k % 2 == 0 else "   " for k in range(n)]
    bad_label = next(c for c in ("neutral", "unknown", "n/a", "?") if c not in classes)
    base.loc[outside, "label"] = bad_label
    base.loc[missing, "label"] = None
    leaks = canonical(golden).iloc[rng.choice(len(golden), size=n, replace=False)].astype(object).copy()
    leaks["text"] = ["  " + t.upper() + " " if k % 2 else t.replace(" ", "  ") for k, t in enumerate(leaks["text"])]
    leaks["example_id"] = [f"resent-{k}" for k in range(n)]
    copies = base.loc[repeated].copy()
    copies["example_id"] = [f"{i}-again" for i in copies["example_id"]]
    frame = pd.concat([base, leaks, copies], ignore_index=True)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    faults = {"empty_text": n, "label_out_of_domain": n, "label_missing": n, "golden_leak": n, "duplicate_rows": n}
    return BrokenBatch(frame=frame, faults=faults)


def _write_parquet(frame: pd.DataFrame, path: Path, *, read_only: bool = False) -> None:
    """Write ``path`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    frame.to_parquet(tmp, index=False)
    if read_only:
        tmp.chmod(0o444)
    os.replace(tmp, path)


def write_golden(golden: pd.DataFrame, settings: TextclfSettings) -> Path:
    """Store the golden test set once; a different one in the same data dir is an error (it is fixed)."""
    path = settings.golden_path
    if path.exists():
        existing = rows_digest(pd.read_parquet(path))
        if existing != rows_digest(golden):
            raise IngestError(
                f"a different golden test set is already at {path} (digest {existing[:12]}); the golden set is "
                f"fixed for the life of a dataset: use another data dir to start over"
            )
        return path
    _write_parquet(canonical(golden), path, read_only=True)
    return path


def load_golden(settings: TextclfSettings) -> pd.DataFrame:
    path = settings.golden_path
    if not path.exists():
        raise IngestError(f"no golden test set at {path}: `mlsd textclf batches` writes one with the batches")
    return pd.read_parquet(path)


def write_split(split: CorpusSplit, settings: TextclfSettings, broken: BrokenBatch | None = None) -> list[Path]:
    """The golden set into the dataset folder and every batch (and the broken one) into the inbox."""
    paths = [write_golden(split.golden, settings)]
    for batch in split.batches:
        path = settings.inbox / f"{batch.name}.parquet"
        _write_parquet(canonical(batch.frame), path)
        paths.append(path)
    if broken is not None:
        path = settings.inbox / BROKEN_NAME
        _write_parquet(broken.frame, path)
        paths.append(path)
    return paths


def read_batch(path: Path) -> pd.DataFrame:
    """A batch file as submitted, with a fresh 0..n-1 index (its row numbers in reports)."""
    try:
        return read_table(path).reset_index(drop=True)
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(f"{path.name}: cannot be read ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------- the versioned dataset


class BatchEntry(BaseModel):
    """One accepted batch inside a version: its rows are ``[offset, offset + rows)`` of the version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    digest: str
    rows: int
    offset: int
    class_balance: dict[str, Any]
    slices: dict[str, int]
    ingested_at: str


class VersionManifest(BaseModel):
    """What a version holds and where it came from. Only ``version_id``/``digest`` are content; the rest is
    lineage and summary, written once when the version is created."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version_id: str
    digest: str
    parent: str | None
    batches: list[BatchEntry]
    rows: int
    class_balance: dict[str, Any]
    slices: dict[str, int]
    golden_digest: str | None
    corpus: str
    created_at: str
    warnings: list[str] = []
    rows_format: str = ROWS_FORMAT


@dataclass(frozen=True)
class AppendResult:
    manifest: VersionManifest
    created: bool
    """False when the batch was already in the dataset (or the version already existed): nothing was written."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _slice_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["slice"].value_counts().sort_index().items()}


class DatasetStore:
    """Immutable batch objects and version manifests under one folder, plus ``HEAD`` (the latest version)."""

    def __init__(self, root: Path, *, classes: Sequence[str], corpus: str = "") -> None:
        self.root = root
        self.classes = list(classes)
        self.corpus = corpus

    @classmethod
    def of(cls, settings: TextclfSettings) -> DatasetStore:
        return cls(settings.store_dir, classes=settings.corpus.class_names, corpus=settings.corpus.name)

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def head(self) -> VersionManifest | None:
        path = self.root / "HEAD"
        return self.manifest(path.read_text().strip()) if path.exists() else None

    def resolve(self, version: str) -> str:
        """A version id from an id or a unique prefix of one."""
        if (self.versions_dir / f"{version}.json").exists():
            return version
        known = sorted(p.stem for p in self.versions_dir.glob("*.json")) if self.versions_dir.exists() else []
        hits = [v for v in known if v.startswith(version)] if version else []
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise IngestError(f"version prefix {version!r} is ambiguous: {', '.join(hits)}")
        raise IngestError(f"no dataset version {version!r} in {self.root}; known: {', '.join(known) or 'none'}")

    def manifest(self, version: str) -> VersionManifest:
        path = self.versions_dir / f"{self.resolve(version)}.json"
        return VersionManifest.model_validate_json(path.read_text())

    def versions(self) -> list[VersionManifest]:
        """Every version, oldest first."""
        if not self.versions_dir.exists():
            return []
        found = [VersionManifest.model_validate_json(p.read_text()) for p in self.versions_dir.glob("*.json")]
        return sorted(found, key=lambda m: (m.created_at, m.rows))

    def contains_batch(self, digest: str) -> VersionManifest | None:
        """The latest version if a batch with these rows is already in it (versions are cumulative)."""
        head = self.head()
        return head if head is not None and any(b.digest == digest for b in head.batches) else None

    def load(self, version: str) -> pd.DataFrame:
        """The rows of a version, re-hashed: an object that changed on disk is an error."""
        m = self.manifest(version)
        frames = []
        for entry in m.batches:
            path = self.objects / f"{entry.digest}.parquet"
            if not path.exists():
                raise IngestError(f"version {m.version_id}: batch object {path.name} is missing")
            frames.append(pd.read_parquet(path))
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EXAMPLE_COLUMNS))
        if rows_digest(rows) != m.digest:
            raise IngestError(
                f"version {m.version_id} does not match its digest: its objects under {self.objects} changed"
            )
        return rows

    def append(
        self,
        batch: pd.DataFrame,
        *,
        name: str,
        golden_digest: str | None = None,
        warnings: Sequence[str] = (),
    ) -> AppendResult:
        """A new version = the latest version's rows + ``batch`` (validated by the caller: see ``validate.admit``).

        Idempotent: a batch whose rows are already in the dataset, or a version that already exists, creates
        nothing and returns the existing manifest.
        """
        rows = canonical(batch).astype(object)
        digest = rows_digest(rows)
        already = self.contains_batch(digest)
        if already is not None:
            return AppendResult(already, created=False)
        head = self.head()
        parent_rows = self.load(head.version_id) if head is not None else None
        combined = rows if parent_rows is None else pd.concat([parent_rows, rows], ignore_index=True)
        version_digest = rows_digest(combined)
        version_id = version_id_of(version_digest)
        path = self.versions_dir / f"{version_id}.json"
        if path.exists():
            existing = VersionManifest.model_validate_json(path.read_text())
            self._set_head(version_id)
            return AppendResult(existing, created=False)
        obj = self.objects / f"{digest}.parquet"
        if not obj.exists():
            _write_parquet(rows, obj, read_only=True)
        now = _now()
        entry = BatchEntry(
            name=name,
            digest=digest,
            rows=len(rows),
            offset=0 if parent_rows is None else len(parent_rows),
            class_balance=class_balance(rows["label"], self.classes),
            slices=_slice_counts(rows),
            ingested_at=now,
        )
        manifest = VersionManifest(
            version_id=version_id,
            digest=version_digest,
            parent=head.version_id if head is not None else None,
            batches=[*(head.batches if head is not None else []), entry],
            rows=len(combined),
            class_balance=class_balance(combined["label"], self.classes),
            slices=_slice_counts(combined),
            golden_digest=golden_digest,
            corpus=self.corpus,
            created_at=now,
            warnings=list(warnings),
        )
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
        tmp.chmod(0o444)
        os.replace(tmp, path)
        self._set_head(version_id)
        return AppendResult(manifest, created=True)

    def _set_head(self, version_id: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".HEAD.part"
        tmp.write_text(version_id + "\n")
        os.replace(tmp, self.root / "HEAD")


def load_version(version: str, settings: TextclfSettings) -> pd.DataFrame:
    """The rows of dataset version ``version`` (an id or a unique prefix), verified against its digest."""
    return DatasetStore.of(settings).load(version)


def list_versions(settings: TextclfSettings) -> list[VersionManifest]:
    return DatasetStore.of(settings).versions()


def to_mlflow_dataset(version: str, settings: TextclfSettings) -> Any:
    """An ``mlflow.data`` dataset of a version whose digest is the version id (not MLflow's 10k-row sample hash),
    for ``mlflow.log_input(dataset, context="training")``."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.pandas_dataset import from_pandas

    store = DatasetStore.of(settings)
    manifest = store.manifest(version)
    # built as a "local" source directly: resolving a path string warns that two registered sources match
    uri = (store.versions_dir / f"{manifest.version_id}.json").resolve().as_uri()
    source = get_dataset_source_from_json(json.dumps({"uri": uri}), "local")
    return from_pandas(
        store.load(manifest.version_id),
        source=source,
        targets="label",
        name=f"textclf-{manifest.corpus or 'corpus'}",
        digest=manifest.version_id,
    )


def move_file(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` without replacing anything there (``name-2.ext``, ``name-3.ext`` …)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    k = 2
    while target.exists():
        target = folder / f"{path.stem}-{k}{path.suffix}"
        k += 1
    shutil.move(str(path), str(target))
    return target


# ------------------------------------------------------------------------- labelled examples from a topic
#
#   textclf.labeled ──collect_labeled──▶ inbox/t-<topic>-p<P>-<first>-<last>.parquet ──▶ the gate, as any file
#                   └─ invalid message ──▶ textclf.labeled.dlq (the reason)
#
# A stream of single examples (a labelling tool, a feedback form) becomes batch files, so it meets exactly the
# same gate and versioning as a file drop. Exactly once into the inbox: the file names carry the offsets they
# hold, and they are the collector's offset store. A file is written (atomically) *before* the group commit,
# so a crash between the two re-delivers examples that are already in a file; the collector skips every offset
# at or below the highest one named by a file in the inbox, accepted/ or quarantine/. Buffered examples are
# never committed, so a crash before the write re-delivers them. The topic has one partition on purpose: the
# delivery order is the row order of the next version (a version's id covers its rows' order).


class LabeledExample(BaseModel):
    """One message of ``labeled_topic`` (JSON). ``slice`` may be missing (it becomes ``(missing)``)."""

    model_config = ConfigDict(extra="ignore")

    example_id: str = Field(min_length=1, max_length=256)
    text: str
    label: str
    slice: str | None = Field(default=None, max_length=256)


def topic_file_prefix(topic: str) -> str:
    return f"t-{re.sub(r'[^a-z0-9]+', '-', topic.casefold()).strip('-')}-p"


def topic_file_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic_file_prefix(topic)}{partition}-{first:012d}-{last:012d}.parquet"


def written_offsets(settings: TextclfSettings) -> dict[int, int]:
    """The highest offset per partition already in a batch file (inbox, accepted/ or quarantine/)."""
    prefix = topic_file_prefix(settings.labeled_topic)
    pattern = re.compile(re.escape(prefix) + r"(\d+)-(\d{12})-(\d{12})(?:-\d+)?\.parquet$")
    high: dict[int, int] = {}
    for folder in (settings.inbox, settings.accepted_dir, settings.quarantine_dir):
        if not folder.exists():
            continue
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                partition, last = int(match.group(1)), int(match.group(3))
                high[partition] = max(high.get(partition, -1), last)
    return high


def parse_labeled(value: bytes, settings: TextclfSettings) -> dict[str, str]:
    """A message as a row of the contract; raises ``ValueError`` (the dead letter's reason) if it is not one."""
    example = LabeledExample.model_validate_json(value)
    if not example.text.strip():
        raise ValueError("empty text")
    if len(example.text) > settings.max_text_chars:
        raise ValueError(f"text of {len(example.text):,} characters (at most {settings.max_text_chars:,})")
    classes = settings.corpus.class_names
    if example.label not in classes:
        raise ValueError(f"label {example.label[:80]!r} is not one of {', '.join(classes)}")
    return {
        "example_id": example.example_id,
        "text": example.text,
        "label": example.label,
        "slice": example.slice or MISSING_SLICE,
    }


@dataclass
class CollectStats:
    files: list[Path] = field(default_factory=list)
    examples: int = 0
    dead_letters: int = 0
    skipped: int = 0
    """Re-delivered messages already in a batch file (a crash between a write and its commit)."""


def collect_labeled(
    settings: TextclfSettings,
    stop: Any,
    *,
    group_id: str = "textclf-collector",
    on_ready: Any = None,
    on_file: Any = None,
    poll_s: float = 0.5,
) -> CollectStats:
    """Consume ``labeled_topic`` into inbox batch files until ``stop`` (a ``threading.Event``) is set.

    A file is cut when ``collect_batch_rows`` examples are buffered, or ``collect_batch_s`` after the first one
    if at least ``min_batch_rows`` are (a smaller file would only be quarantined as an incomplete delivery).
    ``on_file(path)`` runs after each write and before the commit (tests raise there to crash in between).
    """
    from pydantic import ValidationError

    from systems.common.broker import (
        TopicSpec,
        create_topics,
        dead_letter_topic,
        describe_error,
        make_consumer,
        make_producer,
        send_to_dead_letter,
    )

    topic = settings.labeled_topic
    settings.ensure_dirs()
    create_topics(settings, [TopicSpec(topic, 1), TopicSpec(dead_letter_topic(topic), 1)])
    consumer = make_consumer(settings, [topic], group_id)
    producer = make_producer(settings)
    high = written_offsets(settings)
    buffers: dict[int, list[tuple[int, dict[str, str]]]] = {}
    first_at: float | None = None
    stats = CollectStats()

    def buffered() -> int:
        return sum(len(rows) for rows in buffers.values())

    def cut() -> None:
        nonlocal first_at
        for partition, rows in sorted(buffers.items()):
            if not rows:
                continue
            first, last = rows[0][0], rows[-1][0]
            path = settings.inbox / topic_file_name(topic, partition, first, last)
            _write_parquet(canonical(pd.DataFrame([row for _, row in rows])), path)
            high[partition] = last
            stats.files.append(path)
            stats.examples += len(rows)
            log.info("textclf collector: %d examples -> %s", len(rows), path.name)
            if on_file is not None:
                on_file(path)
        buffers.clear()
        first_at = None
        producer.flush()
        consumer.commit()

    try:
        while not stop.is_set():
            records = consumer.poll(timeout_s=poll_s, max_records=settings.collect_batch_rows)
            if on_ready is not None and consumer.assigned.is_set():
                on_ready()
                on_ready = None
            for record in records:
                if record.offset <= high.get(record.partition, -1):
                    stats.skipped += 1
                    continue
                try:
                    row = parse_labeled(record.value, settings)
                except (ValidationError, ValueError) as exc:
                    send_to_dead_letter(producer, record, describe_error(exc))
                    stats.dead_letters += 1
                    continue
                buffers.setdefault(record.partition, []).append((record.offset, row))
            n = buffered()
            if n and first_at is None:
                first_at = time.monotonic()
            aged = first_at is not None and time.monotonic() - first_at >= settings.collect_batch_s
            if n >= settings.collect_batch_rows or (aged and n >= settings.min_batch_rows):
                cut()
            elif records and n == 0:  # only dead letters and skips since the last commit: nothing is buffered
                producer.flush()
                consumer.commit()
        if buffered() >= settings.min_batch_rows:  # a clean stop keeps a full-enough batch; less comes again
            cut()
    finally:
        producer.flush()
        producer.close()
        consumer.close()
    return stats


def publish_labeled(settings: TextclfSettings, frame: pd.DataFrame) -> int:
    """Send a table's rows (the contract's columns) to ``labeled_topic``, one ``LabeledExample`` each."""
    from systems.common.broker import TopicSpec, create_topics, dead_letter_topic, make_producer

    rows = canonical(frame)
    create_topics(
        settings, [TopicSpec(settings.labeled_topic, 1), TopicSpec(dead_letter_topic(settings.labeled_topic), 1)]
    )
    producer = make_producer(settings)
    try:
        for example_id, text, label, slice_ in rows.itertuples(index=False, name=None):
            message = {"example_id": str(example_id), "text": text, "label": label, "slice": slice_}
            producer.send(settings.labeled_topic, json.dumps(message).encode(), key=str(example_id).encode())
        producer.flush()
    finally:
        producer.close()
    return len(rows)
