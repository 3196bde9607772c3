"""Text-classifier pipeline settings: env prefix ``MLSD_TEXTCLF_`` with ``MLSD_`` as the fallback.

Two kinds of setting live here:

- **The corpus config** (:class:`CorpusConfig`, one JSON value, ``MLSD_TEXTCLF_CORPUS='{"source": ...}'``): which
  table the pipeline reads and how its columns map onto an example (text, label, slice, order, id). The
  pipeline code knows nothing else about the data; the reviews corpus is only the default value of this field.
- **The gate's thresholds** (flat fields, one variable each): what a batch must satisfy to join the dataset and
  when a distribution change is reported as a warning.

Folders (all under ``<data_dir>/textclf``, created by :meth:`TextclfSettings.ensure_dirs`, never at import)::

    inbox/               batch files waiting to be ingested (.parquet or .csv)
    accepted/            batch files that were ingested (kept as submitted, with their validation report)
    quarantine/          batch files that failed validation, each with NAME.report.json and NAME.report.txt
    datasets/golden.parquet       the fixed golden test set, held out before any batch exists
    datasets/objects/DIGEST.parquet   one immutable file per accepted batch, named by its content digest
    datasets/versions/ID.json     one manifest per dataset version; HEAD names the latest
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings

REST = "*"
"""In a batch plan, the group that takes every slice value no other group names (missing values included)."""

RawValue = str | int | float | bool
SENTIMENT_FROM_RATING: dict[str, list[RawValue]] = {"negative": [1, 2], "positive": [4, 5]}
"""The default task: star rating -> sentiment; 3 is excluded (see ``ingest``)."""


MAX_BATCH = 256
"""The hard cap on items per batch request, as the API schema states it."""
MAX_TEXT_CHARS = 20_000
"""The hard cap on characters per text, as the API schema states it."""


class CorpusConfig(BaseModel):
    """How one source table becomes examples ``(example_id, text, label, slice)``.

    The default is the Women's E-Commerce Clothing Reviews corpus cast as binary sentiment (see
    :mod:`systems.mlops_textclf.ingest` for why); any table with a text column and a label column works by
    changing this value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = "clothing-reviews"
    """A dataset name of ``systems.common.data.LOADERS`` (fetched by the project's data mechanism) or the path
    of a .parquet / .csv file."""
    text_columns: list[str] = Field(default_factory=lambda: ["title", "review_text"], min_length=1)
    """Joined with a newline into the example text (empty parts skipped)."""
    label_column: str = "rating"
    label_map: dict[str, list[RawValue]] | None = Field(
        default_factory=lambda: {k: list(v) for k, v in SENTIMENT_FROM_RATING.items()}
    )
    """Class name -> the raw values of ``label_column`` that mean it; rows with any other value are excluded
    (counted). None: the column already holds class names, and ``classes`` lists them."""
    classes: list[str] | None = None
    """The label domain, in order (the last class is the positive one of a binary task). None: the keys of
    ``label_map``."""
    slice_column: str | None = "department"
    """The column that names a row's slice (reported per batch, drives the domain-shift batch plan); None: one
    slice called ``all``."""
    order_column: str | None = None
    """Rows are ordered by this column (e.g. a timestamp) inside and across batches; None: source row order."""
    id_column: str | None = None
    """A stable id per row; None: ``<source name>:<row position in the source>``."""
    batch_plan: list[list[str]] | None = Field(
        default_factory=lambda: [["Tops"], ["Dresses"], ["Bottoms"], ["Intimate", "Jackets", REST]]
    )
    """Ordered groups of slice values, one batch each (``"*"`` = every value no other group names). None:
    ``n_batches`` contiguous chunks in ``order_column`` order (a time-ordered stream instead of a domain shift)."""
    n_batches: int = Field(default=4, ge=1)
    behavioural_suite: bool = True
    """Whether the English review-sentiment CheckList cases of ``evaluate.py`` apply to this task (the gate
    then requires them); a corpus with another task or language sets False (or brings its own cases)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.label_map is None and not self.classes:
            raise ValueError("a corpus without label_map must list its classes")
        if self.label_map is not None:
            if len(self.label_map) < 2:
                raise ValueError("label_map needs at least two classes")
            if self.classes is not None and list(self.classes) != list(self.label_map):
                raise ValueError(f"classes {self.classes} disagree with label_map keys {list(self.label_map)}")
            seen: dict[str, str] = {}
            for name, values in self.label_map.items():
                for value in values:
                    key = str(value)
                    if key in seen:
                        raise ValueError(f"raw label {value!r} maps to both {seen[key]!r} and {name!r}")
                    seen[key] = name
        if self.batch_plan is not None:
            flat = [v for group in self.batch_plan for v in group]
            if not self.batch_plan or any(not group for group in self.batch_plan):
                raise ValueError("batch_plan groups must be non-empty")
            if len(flat) != len(set(flat)):
                raise ValueError(f"batch_plan names a slice value twice: {flat}")
            if self.slice_column is None:
                raise ValueError("batch_plan needs a slice_column")
        return self

    @property
    def class_names(self) -> list[str]:
        if self.label_map is not None:
            return list(self.label_map)
        assert self.classes is not None
        return list(self.classes)

    @property
    def name(self) -> str:
        """A short name of the source for ids and titles (the dataset name, or the file's stem)."""
        return Path(self.source).stem.split(".")[0] if Path(self.source).suffix else self.source


class TextclfSettings(MlsdSettings):
    """Corpus, split, gate thresholds and folders of the text-classifier pipeline."""

    model_config = SettingsConfigDict(env_prefix="MLSD_TEXTCLF_", extra="forbid")

    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    golden_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    """Share of every (label, slice) stratum held out as the golden test set before any batch exists."""
    seed: int = 0
    """Seeds the golden split and the broken batch: the same corpus and seed give the same files."""
    inbox_dir: Path | None = None
    """Where batch files arrive; None -> ``<data_dir>/textclf/inbox`` (a deployment points it at a drop folder)."""

    # ---- the gate: a batch that breaks one of these is quarantined
    min_batch_rows: int = 20
    """Fewer rows than this is an incomplete delivery, not a batch."""
    min_class_share: float = 0.05
    """Each class must be at least this share of the batch's valid labels (a batch of one class is a bug)."""
    max_duplicate_rows: int = 0
    """Rows whose normalised text (or id) repeats another row of the same batch."""
    max_length_ks: float = 0.25
    """Largest Kolmogorov–Smirnov statistic between the batch's text lengths and the previous version's (the
    golden set's for the first batch). An effect size, not a p-value: at thousands of rows every p is tiny."""
    length_alpha: float = 0.001
    """... and the KS test must also reject at this level: on a small batch a large statistic can be chance."""

    # ---- the promotion gate (gate.py): a candidate becomes challenger only if it passes all of these
    model_name: str = "textclf"
    """The registered model's name: serving loads ``models:/<model_name>@champion``."""
    gate_margin: float = Field(default=0.002, ge=0.0)
    """Golden-set accuracy the candidate must gain over the champion (with McNemar significant as well)."""
    gate_alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    """Level of McNemar's paired test: a promotion on noise happens at most this often."""
    gate_max_ece: float = Field(default=0.05, gt=0.0)
    gate_max_p99_ms: float = Field(default=50.0, gt=0.0)
    """Single-row p99 latency in the evaluating process: the serving budget."""
    gate_max_slice_drop: float = Field(default=0.03, ge=0.0)
    """Largest accuracy loss in any slice with enough rows, against the champion."""

    # ---- labelled examples on a topic (ingest.collect_labeled): cut into inbox batch files
    labeled_topic: str = "textclf.labeled"
    """``LabeledExample`` messages (JSON); an invalid one goes to ``<topic>.dlq`` with the reason."""
    collect_batch_rows: int = Field(default=500, ge=1)
    """A batch file is cut once this many examples are buffered ..."""
    collect_batch_s: float = Field(default=300.0, gt=0.0)
    """... or this many seconds after the first buffered one, if it holds at least ``min_batch_rows``."""

    # ---- serving and rollout (serve.py, rollout.py)
    port: int = 8004
    admin_token: str | None = None
    """Bearer token of the admin endpoints (rollout, promote, rollback); None: they refuse every call (403)."""
    labels_topic: str = "textclf.feedback"
    """Feedback labels (``LabelRecord`` by ``prediction_id``): the rollout's quality evidence, and monitoring's."""
    publish_predictions: bool = True
    max_batch: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    """Items per ``/predict/batch`` (may be lowered; the API schema states the cap)."""
    max_text_chars: int = Field(default=MAX_TEXT_CHARS, ge=1, le=MAX_TEXT_CHARS)
    """Characters per text, in the API and in examples from the topic (may be lowered)."""
    rollout_tick_s: float = Field(default=0.5, gt=0.0)
    pending_labels: int = Field(default=200_000, ge=1000)
    """Served predictions remembered for the feedback join (oldest forgotten first)."""

    # ---- drift: reported as warnings, never a reason to reject
    drift_slice_tv: float = 0.25
    """Total-variation distance of the slice mix vs the previous version above which drift is reported."""
    drift_vocab_js: float = 0.2
    """Jensen–Shannon distance (base 2) of token frequencies vs the previous version."""
    drift_label_shift: float = 0.1
    """Absolute change of any class share vs the previous version."""

    @property
    def textclf_dir(self) -> Path:
        return self.system_dir("textclf")

    @property
    def inbox(self) -> Path:
        return self.inbox_dir or self.textclf_dir / "inbox"

    @property
    def accepted_dir(self) -> Path:
        return self.textclf_dir / "accepted"

    @property
    def quarantine_dir(self) -> Path:
        return self.textclf_dir / "quarantine"

    @property
    def store_dir(self) -> Path:
        """The versioned dataset: ``objects/`` (batches by digest), ``versions/`` (manifests), ``HEAD``."""
        return self.textclf_dir / "datasets"

    @property
    def golden_path(self) -> Path:
        return self.store_dir / "golden.parquet"

    def ensure_dirs(self) -> None:
        super().ensure_dirs()
        for path in (self.inbox, self.accepted_dir, self.quarantine_dir, self.store_dir):
            path.mkdir(parents=True, exist_ok=True)
