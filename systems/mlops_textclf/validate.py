"""Validate: the gate a batch passes before it may join the dataset, and the quarantine for those that fail.

    inbox/NAME ──read──▶ checks ──all pass──▶ DatasetStore.append (new version) ──▶ accepted/NAME (+ report)
                                  └─any fail──▶ quarantine/NAME + NAME.report.json + NAME.report.txt
    quarantine/NAME ──(fix the file)──▶ resubmit ──▶ inbox/NAME ──▶ the same gate again

A training pipeline that retrains on whatever arrives turns one bad delivery into a bad model, and into every
later model trained on the same versions. So a batch is checked as a whole before it joins, and a failing batch
never joins in part: silently dropping its bad rows would hide a broken producer. It is moved (never deleted)
to the quarantine folder with a report that names every failed check with its numbers and the rows to fix
(0-based positions in the file); fixed and re-submitted, it goes through the same gate.

The checks, and why each one:

- ``schema``: the contract (``example_id``, ``text``, ``label``, ``slice``, all strings, nothing else), checked
  with pandera, which also finds the missing values, empty texts and labels outside the domain below (lazily,
  every failure at once, with row numbers). A producer that renames or retypes a column fails here, not in
  training.
- ``row_count``: a near-empty file is an incomplete delivery.
- ``nulls``, ``empty_text``, ``label_domain``: rows a classifier cannot learn from; a label outside the domain
  means the producer's label rule changed.
- ``class_balance``: every class at least ``min_class_share`` of the batch. A batch of one class is a broken
  join or filter upstream, and would teach the model a prior it does not have.
- ``duplicates``: repeated rows (same normalised text, or same id) inside the batch over-weight those rows.
- ``dataset_overlap``: rows already in the previous version: a re-sent or overlapping delivery. (Re-sending
  exactly a batch that is already in the dataset is not an error: ingest recognises its digest and does nothing.)
- ``leakage``: rows of the golden test set, by normalised-text hash, so a golden review re-sent with other
  capitals or spacing is still caught. One leaked row makes every later evaluation on the golden set optimistic,
  and the gate's champion/challenger comparison meaningless; this is the one check that protects the metric
  rather than the model.
- ``text_length``: the two-sample Kolmogorov–Smirnov statistic of text lengths against the previous version (or
  the golden set for the first batch) must stay below ``max_length_ks``. Truncation, HTML or a wrong column show
  up as a length change before anything else. It fails only when the change is both large (the statistic, an
  effect size: a large batch does not fail on a difference too small to matter, though its p-value would) and
  significant (p below ``length_alpha``: a 40-row batch does not fail on sampling noise, which alone gives
  statistics around 0.2 at that size).
- ``drift`` (**warning only**): slice mix (total variation), vocabulary (Jensen–Shannon distance of token
  frequencies, and the share of tokens the previous version never saw) and class shares against the previous
  version. Drift is reported, never a reason to reject: this pipeline exists *because* new data differs (its
  batches are a domain shift by department), and rejecting shifted data would keep the model on the old domain
  forever. Whether the shift hurts is for the training stage's evaluation to decide, per slice.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from systems.common.errors import MlsdError
from systems.mlops_textclf.ingest import (
    BATCH_SUFFIXES,
    EXAMPLE_COLUMNS,
    DatasetStore,
    IngestError,
    load_golden,
    move_file,
    read_batch,
    rows_digest,
    text_keys,
)
from systems.mlops_textclf.settings import TextclfSettings

Status = Literal["pass", "fail", "warn", "skip"]
MAX_ROWS_LISTED = 1_000
"""Row numbers stored per failed check (the count is always exact)."""
_TOKEN = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationReport:
    """Every check's verdict on one batch file; ``accepted`` when none failed."""

    batch: str
    rows: int
    digest: str | None
    reference_version: str | None
    golden_digest: str | None
    checks: list[CheckResult]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def accepted(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "warn"]

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"accepted": self.accepted, "failed": [c.name for c in self.failed]}

    def summary(self) -> str:
        """The report as a few lines a person reads: the verdict, then one line per check, failures first."""
        verdict = "ACCEPTED" if self.accepted else f"REJECTED, {len(self.failed)} of {len(self.checks)} checks failed"
        ref = f"vs version {self.reference_version}" if self.reference_version else "no previous version"
        lines = [f"{self.batch}: {verdict} ({self.rows:,} rows, {ref})"]
        order = {"fail": 0, "warn": 1, "pass": 2, "skip": 3}
        for c in sorted(self.checks, key=lambda c: order[c.status]):
            lines.append(f"  {c.status.upper():4}  {c.name:16} {c.message}")
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------- the checks


def _rows(mask: pd.Series | np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(mask))[:MAX_ROWS_LISTED]]


def _rows_text(rows: list[int], total: int) -> str:
    shown = ", ".join(map(str, rows[:8]))
    return f"rows {shown}{', …' if total > 8 else ''}"


def _same_rows(frame: pd.DataFrame, keys: pd.Series, other: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Rows of ``frame`` that are rows of ``other``: (by normalised text, by example id)."""
    by_text = keys.notna() & keys.isin(set(text_keys(other["text"])))
    return by_text, frame["example_id"].isin(set(other["example_id"]))


def _pct(n: int, total: int) -> str:
    return f"{n:,} of {total:,} rows ({n / total:.1%})" if total else f"{n:,} rows"


def batch_schema(classes: Iterable[str]) -> Any:
    """The pandera schema of the batch contract; its check errors name our checks (``empty_text`` …)."""
    import pandera.pandas as pa

    return pa.DataFrameSchema(
        {
            "example_id": pa.Column(str, nullable=False),
            "text": pa.Column(
                str,
                nullable=False,
                checks=pa.Check(lambda s: s.str.strip().str.len() > 0, error="empty_text"),
            ),
            "label": pa.Column(str, nullable=False, checks=pa.Check.isin(list(classes), error="label_domain")),
            "slice": pa.Column(str, nullable=False),
        },
        strict=True,
        ordered=False,
    )


def check_contract(frame: pd.DataFrame, classes: list[str]) -> list[CheckResult]:
    """``schema``, ``nulls``, ``empty_text`` and ``label_domain`` from one lazy pandera validation."""
    import pandera.errors

    n = len(frame)
    try:
        with warnings.catch_warnings():  # pandera's own report building trips a pandas deprecation; not ours
            warnings.filterwarnings("ignore", "The behavior of DataFrame concatenation", FutureWarning)
            batch_schema(classes).validate(frame, lazy=True)
        cases = pd.DataFrame(columns=["column", "check", "failure_case", "index"])
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    check = cases["check"].astype(str)
    structural = cases[check.isin(["column_in_dataframe", "column_in_schema"]) | check.str.startswith("dtype(")]
    problems = []
    missing = sorted(structural.loc[structural["check"] == "column_in_dataframe", "failure_case"].astype(str))
    extra = sorted(structural.loc[structural["check"] == "column_in_schema", "failure_case"].astype(str))
    typed = structural[structural["check"].astype(str).str.startswith("dtype(")]
    wrong_type: dict[str, str] = {}
    for col in typed["column"].dropna().unique():
        if col in frame:  # a whole column of another dtype, or an object column holding some non-strings
            dtype = frame[col].dtype
            k = int(typed.loc[typed["column"] == col, "index"].notna().sum())
            wrong_type[str(col)] = f"{k:,} non-string value(s)" if dtype.kind == "O" else str(dtype)
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    if wrong_type:
        problems.append("not strings: " + ", ".join(f"{c} ({t})" for c, t in wrong_type.items()))
    schema = CheckResult(
        "schema",
        "fail" if problems else "pass",
        "; ".join(problems) + f"; the contract is {', '.join(EXAMPLE_COLUMNS)} (strings)"
        if problems
        else f"columns {', '.join(EXAMPLE_COLUMNS)}, all strings",
        {"missing": missing, "unexpected": extra, "wrong_type": wrong_type},
    )

    def row_mask(name: str, column: str) -> pd.Series:
        sel = cases[(check == name) & (cases["column"] == column)]
        idx = pd.to_numeric(sel["index"], errors="coerce").dropna().astype(int)
        return pd.Series(np.isin(np.arange(n), idx.to_numpy()), dtype=bool)

    null_counts = {c: int(row_mask("not_nullable", c).sum()) for c in EXAMPLE_COLUMNS if c in frame}
    null_rows = _rows(np.logical_or.reduce([row_mask("not_nullable", c) for c in null_counts] or [np.zeros(n, bool)]))
    total_nulls = sum(null_counts.values())
    nulls = CheckResult(
        "nulls",
        "fail" if total_nulls else "pass",
        (
            f"{total_nulls:,} missing value(s): "
            + ", ".join(f"{c} {k:,}" for c, k in null_counts.items() if k)
            + f" ({_rows_text(null_rows, total_nulls)})"
        )
        if total_nulls
        else "no missing values",
        {"per_column": null_counts, "rows": null_rows},
    )
    empty = row_mask("empty_text", "text")
    if "text" in frame:  # a missing or non-string text is counted under nulls or schema, not here
        empty &= frame["text"].map(lambda v: isinstance(v, str)).to_numpy()
    n_empty = int(empty.sum())
    empty_text = CheckResult(
        "empty_text",
        "fail" if n_empty else "pass",
        f"{_pct(n_empty, n)} have empty or whitespace-only text ({_rows_text(_rows(empty), n_empty)})"
        if n_empty
        else "every text is non-empty",
        {"count": n_empty, "rows": _rows(empty)},
    )
    domain = cases[(check == "label_domain")]
    bad = domain["failure_case"].astype(str).value_counts().to_dict()
    n_bad = len(domain)
    outside = row_mask("label_domain", "label")
    label_domain = CheckResult(
        "label_domain",
        "fail" if n_bad else "pass",
        f"{_pct(n_bad, n)} have a label outside {{{', '.join(classes)}}}: "
        + ", ".join(f"{v!r} ×{k:,}" for v, k in bad.items())
        + f" ({_rows_text(_rows(outside), n_bad)})"
        if n_bad
        else f"every present label is one of {', '.join(classes)}",
        {"count": n_bad, "values": {str(k): int(v) for k, v in bad.items()}, "rows": _rows(outside)},
    )
    return [schema, nulls, empty_text, label_domain]


def _lengths(texts: pd.Series) -> np.ndarray:
    return texts.dropna().astype(str).str.len().to_numpy()


def _tokens(texts: pd.Series) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts.dropna().astype(str):
        counts.update(_TOKEN.findall(text.casefold()))
    return counts


def _shares(values: pd.Series) -> pd.Series:
    return values.value_counts(normalize=True)


def drift_stats(batch: pd.DataFrame, reference: pd.DataFrame) -> dict[str, Any]:
    """Slice-mix total variation, token Jensen–Shannon distance, unseen-token share and class-share change."""
    from scipy.spatial.distance import jensenshannon

    a, b = _shares(batch["slice"].astype(str)), _shares(reference["slice"].astype(str))
    slice_tv = float(0.5 * a.sub(b, fill_value=0.0).abs().sum())
    tb, tr = _tokens(batch["text"]), _tokens(reference["text"])
    vocab = sorted(set(tb) | set(tr))
    p = np.array([tb[w] for w in vocab], dtype=float)
    q = np.array([tr[w] for w in vocab], dtype=float)
    vocab_js = float(jensenshannon(p, q, base=2)) if p.sum() and q.sum() else 0.0
    unseen = sum(k for w, k in tb.items() if w not in tr) / max(1, sum(tb.values()))
    la, lb = _shares(batch["label"].dropna().astype(str)), _shares(reference["label"].astype(str))
    label_shift = float(la.sub(lb, fill_value=0.0).abs().max()) if len(la) else 0.0
    top_new = [w for w, _ in sorted(((w, k) for w, k in tb.items() if w not in tr), key=lambda x: -x[1])[:8]]
    return {
        "slice_tv": round(slice_tv, 4),
        "vocab_js": round(vocab_js, 4),
        "unseen_token_share": round(unseen, 4),
        "label_shift": round(label_shift, 4),
        "batch_slices": {str(k): round(float(v), 4) for k, v in a.items()},
        "reference_slices": {str(k): round(float(v), 4) for k, v in b.items()},
        "top_unseen_tokens": top_new,
    }


def validate_batch(
    frame: pd.DataFrame,
    *,
    settings: TextclfSettings,
    golden: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    reference_version: str | None = None,
    name: str = "batch",
) -> ValidationReport:
    """Run every check on ``frame`` (rows numbered 0..n-1 as in the file); ``reference`` is the previous version.

    Pure: reads and writes nothing. The content checks need a valid contract; with a broken schema they are
    reported as skipped.
    """
    from scipy.stats import ks_2samp

    frame = frame.reset_index(drop=True)
    n = len(frame)
    classes = settings.corpus.class_names
    checks = check_contract(frame, classes)
    checks.insert(
        1,
        CheckResult(
            "row_count",
            "fail" if n < settings.min_batch_rows else "pass",
            f"{n:,} rows (at least {settings.min_batch_rows:,} required)",
            {"rows": n, "min": settings.min_batch_rows},
        ),
    )
    golden_digest = rows_digest(golden)
    if checks[0].status == "fail":
        skipped = ("class_balance", "duplicates", "dataset_overlap", "leakage", "text_length", "drift")
        checks += [CheckResult(c, "skip", "needs a valid schema") for c in skipped]
        return ValidationReport(name, n, None, reference_version, golden_digest, checks)

    texts = frame["text"]
    usable = texts.notna() & (texts.fillna("").str.strip() != "")
    labels = frame["label"]

    balance = labels[labels.isin(classes)].value_counts()
    valid = int(balance.sum())
    shares = {c: (int(balance.get(c, 0)) / valid if valid else 0.0) for c in classes}
    low = {c: s for c, s in shares.items() if s < settings.min_class_share}
    share_text = ", ".join(f"{c} {s:.1%}" for c, s in shares.items())
    checks.append(
        CheckResult(
            "class_balance",
            "fail" if low or not valid else "pass",
            (
                f"{', '.join(low)} below {settings.min_class_share:.1%} of {valid:,} labelled rows ({share_text})"
                if low
                else f"{share_text} of {valid:,} labelled rows (each at least {settings.min_class_share:.1%})"
            ),
            {"shares": {c: round(s, 4) for c, s in shares.items()}, "min_share": settings.min_class_share},
        )
    )

    keys = text_keys(texts).where(usable)
    dup_text = keys.notna() & keys.duplicated(keep="first")
    dup_id = frame["example_id"].notna() & frame["example_id"].duplicated(keep="first")
    dup = dup_text | dup_id
    n_dup = int(dup.sum())
    checks.append(
        CheckResult(
            "duplicates",
            "fail" if n_dup > settings.max_duplicate_rows else "pass",
            (
                f"{_pct(n_dup, n)} repeat an earlier row ({int(dup_text.sum()):,} by normalised text, "
                f"{int(dup_id.sum()):,} by id; {_rows_text(_rows(dup), n_dup)})"
                if n_dup
                else "no repeated text or id"
            ),
            {"count": n_dup, "by_text": int(dup_text.sum()), "by_id": int(dup_id.sum()), "rows": _rows(dup)},
        )
    )

    if reference is None:
        checks.append(CheckResult("dataset_overlap", "pass", "no previous version"))
    else:
        same_text, same_id = _same_rows(frame, keys, reference)
        overlap = same_text | same_id
        n_over = int(overlap.sum())
        checks.append(
            CheckResult(
                "dataset_overlap",
                "fail" if n_over else "pass",
                (
                    f"{_pct(n_over, n)} are already in version {reference_version} "
                    f"({_rows_text(_rows(overlap), n_over)})"
                    if n_over
                    else f"no row of version {reference_version} ({len(reference):,} rows) is repeated"
                ),
                {"count": n_over, "rows": _rows(overlap)},
            )
        )

    by_text, by_id = _same_rows(frame, keys, golden)
    leak = by_text | by_id
    n_leak = int(leak.sum())
    checks.append(
        CheckResult(
            "leakage",
            "fail" if n_leak else "pass",
            (
                f"{_pct(n_leak, n)} are golden test rows ({int(by_text.sum()):,} by normalised text, "
                f"{int(by_id.sum()):,} by id; {_rows_text(_rows(leak), n_leak)})"
                if n_leak
                else f"none of the {len(golden):,} golden test rows appears"
            ),
            {"count": n_leak, "by_text": int(by_text.sum()), "by_id": int(by_id.sum()), "rows": _rows(leak)},
        )
    )

    ref_texts, ref_name = (
        (reference["text"], f"version {reference_version}")
        if reference is not None
        else (
            golden["text"],
            "the golden set",
        )
    )
    mine, theirs = _lengths(texts[usable]), _lengths(ref_texts)
    if len(mine) and len(theirs):
        test = ks_2samp(mine, theirs)
        ks, p = float(test.statistic), float(test.pvalue)
        med_a, med_b = float(np.median(mine)), float(np.median(theirs))
        checks.append(
            CheckResult(
                "text_length",
                "fail" if ks > settings.max_length_ks and p < settings.length_alpha else "pass",
                f"KS {ks:.3f} (p {p:.1e}) vs {ref_name} (fails above {settings.max_length_ks:.2f} at p < "
                f"{settings.length_alpha:g}); "
                f"median {med_a:.0f} vs {med_b:.0f} chars",
                {
                    "ks": round(ks, 4),
                    "p_value": p,
                    "max_ks": settings.max_length_ks,
                    "alpha": settings.length_alpha,
                    "median": med_a,
                    "reference_median": med_b,
                },
            )
        )
    else:
        checks.append(CheckResult("text_length", "skip", "no non-empty text to compare"))

    if reference is None:
        checks.append(CheckResult("drift", "skip", "no previous version to compare with"))
    else:
        stats = drift_stats(frame[usable], reference)
        limits = {
            "slice_tv": settings.drift_slice_tv,
            "vocab_js": settings.drift_vocab_js,
            "label_shift": settings.drift_label_shift,
        }
        over = [k for k, limit in limits.items() if stats[k] > limit]
        numbers = ", ".join(
            f"{k} {stats[k]:.3f}{' > ' + format(limits[k], '.2f') if k in over else ''}" for k in limits
        )
        checks.append(
            CheckResult(
                "drift",
                "warn" if over else "pass",
                f"{numbers}; unseen tokens {stats['unseen_token_share']:.1%}"
                + ("; expected when batches follow a domain shift, not a reason to reject" if over else ""),
                stats | {"limits": limits, "exceeded": over},
            )
        )
    return ValidationReport(name, n, rows_digest(frame), reference_version, golden_digest, checks)


def unreadable_report(name: str, error: Exception) -> ValidationReport:
    return ValidationReport(name, 0, None, None, None, [CheckResult("read", "fail", str(error))])


# ------------------------------------------------------------------------------------- gate and quarantine


def write_report(report: ValidationReport, folder: Path, file_name: str) -> tuple[Path, Path]:
    """``<file_name>.report.json`` and ``<file_name>.report.txt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    js, txt = folder / f"{file_name}.report.json", folder / f"{file_name}.report.txt"
    js.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    txt.write_text(report.summary() + "\n")
    return js, txt


def quarantine(path: Path, report: ValidationReport, settings: TextclfSettings) -> Path:
    """Move the file to the quarantine folder (renamed if the name is taken, never replacing) with its report."""
    target = move_file(path, settings.quarantine_dir)
    write_report(report, settings.quarantine_dir, target.name)
    with (settings.quarantine_dir / f"{target.name}.report.txt").open("a") as fh:
        fh.write(f"fix {target}, then `mlsd textclf resubmit {target.name}` and `mlsd textclf ingest`\n")
    return target


def quarantined(settings: TextclfSettings) -> list[Path]:
    """The batch files waiting in quarantine (their reports excluded)."""
    folder = settings.quarantine_dir
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES)


def resubmit(name: str, settings: TextclfSettings) -> Path:
    """Move a (fixed) quarantined file back to the inbox; its old reports move to ``quarantine/history``."""
    source = settings.quarantine_dir / name
    if not source.is_file() or source.suffix.lower() not in BATCH_SUFFIXES:
        names = ", ".join(p.name for p in quarantined(settings)) or "none"
        raise MlsdError(f"no quarantined batch {name!r}; quarantined: {names}")
    target = settings.inbox / name
    if target.exists():
        raise MlsdError(f"{target} already exists: ingest or remove it before re-submitting {name}")
    settings.inbox.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for old in (settings.quarantine_dir / f"{name}.report.json", settings.quarantine_dir / f"{name}.report.txt"):
        if old.exists():
            history = settings.quarantine_dir / "history"
            history.mkdir(exist_ok=True)
            old.replace(history / f"{name}.{stamp}{old.name[len(name) :]}")  # NAME.<stamp>.report.json
    source.replace(target)
    return target


Outcome = Literal["accepted", "already-ingested", "quarantined"]


@dataclass(frozen=True)
class AdmitResult:
    name: str
    outcome: Outcome
    rows: int
    version_id: str | None
    """The version the batch is in (new or existing); None when quarantined."""
    report: ValidationReport
    path: Path
    """Where the file is now (accepted/ or quarantine/)."""


def inbox_files(settings: TextclfSettings) -> list[Path]:
    """Batch files in the inbox in delivery (name) order; hidden and partial files are not batches yet."""
    if not settings.inbox.exists():
        return []
    return sorted(
        p
        for p in settings.inbox.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in BATCH_SUFFIXES
    )


def admit(
    path: Path, settings: TextclfSettings, *, store: DatasetStore | None = None, golden: pd.DataFrame | None = None
) -> AdmitResult:
    """One inbox file through the gate: into a new version (file -> accepted/) or into quarantine."""
    store = store or DatasetStore.of(settings)
    golden = load_golden(settings) if golden is None else golden
    try:
        frame = read_batch(path)
    except IngestError as exc:
        report = unreadable_report(path.name, exc)
        return AdmitResult(path.name, "quarantined", 0, None, report, quarantine(path, report, settings))
    head = store.head()
    if set(EXAMPLE_COLUMNS) <= set(frame.columns):
        known = store.contains_batch(rows_digest(frame))
        if known is not None:
            report = ValidationReport(path.name, len(frame), rows_digest(frame), known.version_id, None, [])
            target = move_file(path, settings.accepted_dir)
            return AdmitResult(path.name, "already-ingested", len(frame), known.version_id, report, target)
    reference = store.load(head.version_id) if head is not None else None
    report = validate_batch(
        frame,
        settings=settings,
        golden=golden,
        reference=reference,
        reference_version=head.version_id if head is not None else None,
        name=path.name,
    )
    if not report.accepted:
        return AdmitResult(path.name, "quarantined", len(frame), None, report, quarantine(path, report, settings))
    result = store.append(
        frame,
        name=path.name,
        golden_digest=report.golden_digest,
        warnings=[f"{c.name}: {c.message}" for c in report.warnings],
    )
    target = move_file(path, settings.accepted_dir)
    write_report(report, settings.accepted_dir, target.name)
    return AdmitResult(path.name, "accepted", len(frame), result.manifest.version_id, report, target)


def admit_inbox(settings: TextclfSettings, *, limit: int | None = None) -> list[AdmitResult]:
    """Every inbox file (or the first ``limit``), in name order, through :func:`admit`."""
    store = DatasetStore.of(settings)
    golden = load_golden(settings)
    files = inbox_files(settings)
    return [admit(p, settings, store=store, golden=golden) for p in files[:limit]]
