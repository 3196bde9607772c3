"""The gate on the tiny corpus: clean batches pass, each fault is caught with its numbers, quarantine and resubmit."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from systems.common.errors import MlsdError
from systems.mlops_textclf.ingest import DatasetStore, IngestError, make_broken_batch, write_split
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.validate import admit, quarantined, resubmit, validate_batch

pytestmark = pytest.mark.unit

CONTENT_CHECKS = ("class_balance", "duplicates", "dataset_overlap", "leakage", "text_length", "drift")


def _statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_clean_batches_pass_and_drift_only_warns(textclf_settings: TextclfSettings, split) -> None:
    first, second = split.batches[0].frame, split.batches[1].frame
    report = validate_batch(first, settings=textclf_settings, golden=split.golden)
    assert report.accepted, report.summary()
    assert _statuses(report) == {
        "schema": "pass",
        "row_count": "pass",
        "nulls": "pass",
        "empty_text": "pass",
        "label_domain": "pass",
        "class_balance": "pass",
        "duplicates": "pass",
        "dataset_overlap": "pass",
        "leakage": "pass",
        "text_length": "pass",
        "drift": "skip",  # nothing to drift from yet
    }
    # the next department is a real shift (other slice, other words): reported, and still accepted
    shifted = validate_batch(second, settings=textclf_settings, golden=split.golden, reference=first)
    assert shifted.accepted, shifted.summary()
    drift = shifted.check("drift")
    assert drift.status == "warn" and drift.details["slice_tv"] == 1.0
    assert "slice_tv" in drift.details["exceeded"] and "vocab_js" in drift.details["exceeded"]
    # the same department again does not warn about its slice mix
    same = validate_batch(first.iloc[:20], settings=textclf_settings, golden=split.golden, reference=first.iloc[20:])
    assert same.check("drift").details["slice_tv"] == 0.0


def test_broken_batch_is_quarantined_then_fixed_and_accepted(textclf_settings: TextclfSettings, split) -> None:
    settings = textclf_settings
    write_split(split, settings)
    v1 = admit(settings.inbox / "01-shoes.parquet", settings)
    store = DatasetStore.of(settings)
    objects_before = sorted(p.name for p in store.objects.iterdir())

    clean = split.batches[1].frame  # not ingested yet
    broken = make_broken_batch(clean, split.golden, classes=split.classes, seed=3, n_each=3)
    path = settings.inbox / "02-phones-v2.parquet"
    broken.frame.to_parquet(path, index=False)
    result = admit(path, settings)

    assert result.outcome == "quarantined" and result.version_id is None
    report = result.report
    assert {c.name for c in report.failed} == {"nulls", "empty_text", "label_domain", "duplicates", "leakage"}
    assert report.check("nulls").details["per_column"] == {"example_id": 0, "text": 0, "label": 3, "slice": 0}
    assert report.check("empty_text").details["count"] == 3
    assert report.check("label_domain").details["values"] == {"neutral": 3}
    assert report.check("duplicates").details["by_text"] == 3
    leak = report.check("leakage").details
    assert (leak["count"], leak["by_text"], leak["by_id"]) == (3, 3, 0)  # re-typed, under new ids
    for name in ("schema", "row_count", "class_balance", "dataset_overlap", "text_length"):
        assert report.check(name).status == "pass", report.summary()

    # the dataset did not change
    assert store.head() is not None and store.head().version_id == v1.version_id  # type: ignore[union-attr]
    assert [m.version_id for m in store.versions()] == [v1.version_id]
    assert sorted(p.name for p in store.objects.iterdir()) == objects_before
    # the file is kept in quarantine, with a JSON and a text report naming every failure with its numbers
    assert not path.exists() and result.path == settings.quarantine_dir / path.name and result.path.exists()
    assert quarantined(settings) == [result.path]
    saved = json.loads((settings.quarantine_dir / f"{path.name}.report.json").read_text())
    assert saved["accepted"] is False and sorted(saved["failed"]) == sorted(c.name for c in report.failed)
    text = (settings.quarantine_dir / f"{path.name}.report.txt").read_text()
    for line in ("FAIL  nulls", "FAIL  empty_text", "FAIL  label_domain", "FAIL  duplicates", "FAIL  leakage"):
        assert line in text
    assert "'neutral' ×3" in text and "3 of " in text and "resubmit 02-phones-v2.parquet" in text

    # fix it where it lies (drop the rows the report names), re-submit, and it goes through the same gate
    bad_rows = sorted({r for c in saved["checks"] if c["status"] == "fail" for r in c["details"]["rows"]})
    fixed = pd.read_parquet(result.path).drop(index=bad_rows)
    fixed.to_parquet(result.path, index=False)
    back = resubmit(path.name, settings)
    assert back == path and back.exists() and not result.path.exists()
    assert not (settings.quarantine_dir / f"{path.name}.report.json").exists()  # moved to history, not lost
    assert len(list((settings.quarantine_dir / "history").glob(f"{path.name}.*.report.json"))) == 1
    accepted = admit(back, settings)
    assert accepted.outcome == "accepted", accepted.report.summary()
    manifest = store.manifest(accepted.version_id or "")
    assert manifest.parent == v1.version_id and manifest.batches[-1].rows == len(clean) - 9
    assert set(fixed["text"]) <= set(clean["text"])
    with pytest.raises(MlsdError, match=r"no quarantined batch 'nope\.parquet'"):
        resubmit("nope.parquet", settings)


def test_golden_rows_leaking_into_a_batch_are_caught(textclf_settings: TextclfSettings, split) -> None:
    batch, golden = split.batches[0].frame, split.golden
    retyped = golden.iloc[[0]].assign(example_id="new-1", text=lambda f: "  " + f["text"].str.upper() + "!")
    verbatim = golden.iloc[[1]]
    report = validate_batch(pd.concat([batch, retyped, verbatim]), settings=textclf_settings, golden=golden)
    assert [c.name for c in report.failed] == ["leakage"]
    leak = report.check("leakage").details
    assert (leak["count"], leak["by_text"], leak["by_id"]) == (2, 2, 1)
    assert leak["rows"] == [len(batch), len(batch) + 1]


def test_duplicates_inside_a_batch_are_caught(textclf_settings: TextclfSettings, split) -> None:
    batch = split.batches[0].frame
    same_text = batch.iloc[[5]].assign(example_id="copy-5", text=lambda f: f["text"].str.replace(" ", "   "))
    same_id = batch.iloc[[6]].assign(text="a different text entirely, sole and heel")
    with_dups = pd.concat([batch, same_text, same_id])
    report = validate_batch(with_dups, settings=textclf_settings, golden=split.golden)
    assert [c.name for c in report.failed] == ["duplicates"]
    dup = report.check("duplicates").details
    assert (dup["count"], dup["by_text"], dup["by_id"]) == (2, 1, 1)
    assert dup["rows"] == [len(batch), len(batch) + 1]
    tolerant = textclf_settings.model_copy(update={"max_duplicate_rows": 2})
    assert validate_batch(with_dups, settings=tolerant, golden=split.golden).accepted


def test_rows_already_in_the_dataset_are_caught(textclf_settings: TextclfSettings, split) -> None:
    first, second = split.batches[0].frame, split.batches[1].frame
    resent = pd.concat([second, first.iloc[:3]])
    report = validate_batch(
        resent, settings=textclf_settings, golden=split.golden, reference=first, reference_version="v1"
    )
    assert [c.name for c in report.failed] == ["dataset_overlap"]
    assert report.check("dataset_overlap").details["count"] == 3


def test_schema_breaks_fail_and_skip_the_content_checks(textclf_settings: TextclfSettings, split) -> None:
    batch = split.batches[0].frame
    renamed = batch.rename(columns={"label": "sentiment"}).assign(extra=1)
    report = validate_batch(renamed, settings=textclf_settings, golden=split.golden)
    schema = report.check("schema")
    assert schema.status == "fail"
    assert schema.details["missing"] == ["label"] and schema.details["unexpected"] == ["extra", "sentiment"]
    assert all(report.check(c).status == "skip" for c in CONTENT_CHECKS)
    numeric = batch.assign(label=(batch["label"] == "good").astype(int))
    typed = validate_batch(numeric, settings=textclf_settings, golden=split.golden)
    assert typed.check("schema").status == "fail" and typed.check("schema").details["wrong_type"] == {"label": "int64"}


def test_class_balance_and_row_count_bounds(textclf_settings: TextclfSettings, split) -> None:
    batch = split.batches[2].frame
    one_class = batch[batch["label"] == "good"]
    report = validate_batch(one_class, settings=textclf_settings, golden=split.golden)
    assert [c.name for c in report.failed] == ["class_balance"]
    assert report.check("class_balance").details["shares"] == {"bad": 0.0, "good": 1.0}
    tiny = validate_batch(batch.iloc[:5], settings=textclf_settings, golden=split.golden)
    assert "row_count" in [c.name for c in tiny.failed]


def test_a_text_length_shift_fails_but_noise_does_not(textclf_settings: TextclfSettings, split) -> None:
    reference, batch = split.batches[0].frame, split.batches[2].frame
    truncated = batch.assign(text=batch["text"].str[:12] + batch["example_id"])  # unique, but cut short
    report = validate_batch(truncated, settings=textclf_settings, golden=split.golden, reference=reference)
    length = report.check("text_length")
    assert length.status == "fail" and length.details["ks"] > 0.9 and length.details["p_value"] < 1e-6
    assert validate_batch(batch, settings=textclf_settings, golden=split.golden, reference=reference).accepted


def test_unreadable_files_are_quarantined_and_never_overwritten(textclf_settings: TextclfSettings, split) -> None:
    settings = textclf_settings
    write_split(split, settings)
    for _ in range(2):
        bad = settings.inbox / "garbled.parquet"
        bad.write_bytes(b"not a parquet file")
        result = admit(bad, settings)
        assert result.outcome == "quarantined" and [c.name for c in result.report.failed] == ["read"]
    assert [p.name for p in quarantined(settings)] == ["garbled-2.parquet", "garbled.parquet"]
    assert DatasetStore.of(settings).head() is None


def test_the_gate_needs_a_golden_set(textclf_settings: TextclfSettings, split) -> None:
    path = textclf_settings.inbox / "01.parquet"
    split.batches[0].frame.to_parquet(path, index=False)
    with pytest.raises(IngestError, match="no golden test set"):
        admit(path, textclf_settings)
    assert path.exists()
