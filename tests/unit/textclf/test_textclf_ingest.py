"""Batches and versions on a tiny synthetic corpus: reproducible splits, content-addressed immutable versions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from systems.mlops_textclf.ingest import (
    DatasetStore,
    IngestError,
    load_version,
    make_batches,
    rows_digest,
    to_examples,
    version_id_of,
    write_split,
)
from systems.mlops_textclf.settings import CorpusConfig, TextclfSettings
from systems.mlops_textclf.validate import admit, inbox_files
from tests.unit.textclf.textclf_support import (
    CONFIG,
    N_EMPTY,
    N_MEH,
    N_REPEATED,
    N_ROWS,
    make_textclf_settings,
    tiny_corpus,
)

pytestmark = pytest.mark.unit


def _inbox(settings: TextclfSettings, name: str) -> Path:
    return settings.inbox / f"{name}.parquet"


def test_examples_follow_the_config_and_drop_what_the_task_excludes(corpus: pd.DataFrame) -> None:
    examples, dropped = to_examples(corpus, CONFIG)
    assert dropped == {"excluded_label": N_MEH, "empty_text": N_EMPTY, "duplicate_text": N_REPEATED}
    assert len(examples) == N_ROWS - N_MEH - N_EMPTY - N_REPEATED
    assert list(examples.columns) == ["example_id", "text", "label", "slice"]
    assert set(examples["label"]) == {"bad", "good"}
    assert examples["text"].str.strip().ne("").all()
    # title and body joined with a newline; an empty headline adds nothing
    row = corpus.set_index("uid").loc[examples["example_id"].iloc[0]]
    expected = f"{row['headline']}\n{row['body']}" if row["headline"] else row["body"]
    assert examples["text"].iloc[0] == expected
    # rows in order of the configured time column
    ts = corpus.set_index("uid").loc[examples["example_id"], "ts"]
    assert ts.is_monotonic_increasing


def test_batches_are_reproducible_disjoint_and_follow_the_plan(corpus: pd.DataFrame) -> None:
    a = make_batches(corpus, CONFIG, golden_fraction=0.1, seed=0)
    b = make_batches(tiny_corpus(), CONFIG, golden_fraction=0.1, seed=0)
    assert [x.name for x in a.batches] == ["01-shoes", "02-phones", "03-books-rest"]
    assert rows_digest(a.golden) == rows_digest(b.golden)
    assert [rows_digest(x.frame) for x in a.batches] == [rows_digest(x.frame) for x in b.batches]
    assert set(a.batches[0].frame["slice"]) == {"shoes"}
    assert set(a.batches[1].frame["slice"]) == {"phones"}
    assert set(a.batches[2].frame["slice"]) == {"books", "garden"}  # "*" takes the rest
    ids = [set(a.golden["example_id"]), *(set(x.frame["example_id"]) for x in a.batches)]
    assert sum(map(len, ids)) == len(set().union(*ids)) == N_ROWS - N_MEH - N_EMPTY - N_REPEATED
    # stratified: every (label, slice) stratum gives round(10 %) of its rows to the golden set
    examples, _ = to_examples(corpus, CONFIG)
    sizes = examples.groupby(["label", "slice"]).size()
    golden_sizes = a.golden.groupby(["label", "slice"]).size().reindex(sizes.index, fill_value=0)
    assert ((sizes * 0.1 + 0.5).astype(int) == golden_sizes).all()
    assert set(a.golden["slice"]) == {"shoes", "phones", "books", "garden"}
    other_seed = make_batches(corpus, CONFIG, golden_fraction=0.1, seed=1)
    assert set(other_seed.golden["example_id"]) != set(a.golden["example_id"])


def test_without_a_plan_batches_are_time_ordered_chunks(corpus: pd.DataFrame) -> None:
    config = CONFIG.model_copy(update={"batch_plan": None, "n_batches": 3})
    split = make_batches(corpus, config, golden_fraction=0.1, seed=0)
    ts = corpus.set_index("uid")["ts"]
    spans = [(ts.loc[b.frame["example_id"]].min(), ts.loc[b.frame["example_id"]].max()) for b in split.batches]
    assert len(spans) == 3
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))


def test_corpus_config_errors_name_the_fix(corpus: pd.DataFrame) -> None:
    with pytest.raises(IngestError, match=r"no column.*stars"):
        to_examples(corpus, CONFIG.model_copy(update={"label_column": "stars"}))
    with pytest.raises(IngestError, match=r"slice value\(s\) \['toys'\]"):
        make_batches(corpus, CONFIG.model_copy(update={"batch_plan": [["toys"], ["*"]]}), golden_fraction=0.1, seed=0)
    with pytest.raises(IngestError, match="matched no row"):
        to_examples(corpus, CONFIG.model_copy(update={"label_map": {"bad": [1], "good": [5]}}))
    with pytest.raises(ValueError, match="maps to both"):
        CorpusConfig(label_map={"bad": ["down"], "good": ["down"]})


def test_digest_is_the_documented_canonical_serialisation() -> None:
    rows = pd.DataFrame(
        {
            "example_id": ["a", "b"],
            "text": ["Grüße, world", 'say "hi"\n'],
            "label": ["good", "bad"],
            "slice": ["s", "t"],
        }
    )
    expected = (
        '{"format":"mlsd.textclf.rows/1","columns":["example_id","text","label","slice"]}\n'
        '["a","Grüße, world","good","s"]\n'
        '["b","say \\"hi\\"\\n","bad","t"]\n'
    ).encode()
    assert rows_digest(rows) == hashlib.sha256(expected).hexdigest()
    # extra columns and the index are not content; order and every value are
    assert rows_digest(rows.assign(extra=1).set_axis([7, 9])) == rows_digest(rows)
    assert rows_digest(rows.iloc[::-1]) != rows_digest(rows)
    assert rows_digest(rows.replace({"good": "bad"})) != rows_digest(rows)


def test_same_content_gives_the_same_version_id(tmp_path: Path, split) -> None:
    ids = []
    for run in ("one", "two"):
        settings = make_textclf_settings(tmp_path / run)
        write_split(split, settings)
        first = inbox_files(settings)[0]
        result = admit(first, settings)
        assert result.outcome == "accepted"
        ids.append(result.version_id)
    assert ids[0] == ids[1] == version_id_of(rows_digest(split.batches[0].frame))

    # re-ingesting the same rows (another file name, CSV instead of parquet) creates nothing
    again = settings.inbox / "01-shoes-resent.csv"
    split.batches[0].frame.to_csv(again, index=False)
    store = DatasetStore.of(settings)
    before = [m.version_id for m in store.versions()]
    result = admit(again, settings)
    assert result.outcome == "already-ingested" and result.version_id == ids[0]
    assert [m.version_id for m in store.versions()] == before
    assert (settings.accepted_dir / "01-shoes-resent.csv").exists() and not again.exists()


def test_a_new_batch_is_a_new_version_and_the_old_one_is_unchanged(textclf_settings: TextclfSettings, split) -> None:
    write_split(split, textclf_settings)
    v1 = admit(_inbox(textclf_settings, "01-shoes"), textclf_settings)
    store = DatasetStore.of(textclf_settings)
    assert v1.version_id is not None
    v1_rows = load_version(v1.version_id, textclf_settings)
    v1_manifest = (store.versions_dir / f"{v1.version_id}.json").read_text()

    v2 = admit(_inbox(textclf_settings, "02-phones"), textclf_settings)
    assert v2.outcome == "accepted" and v2.version_id not in (None, v1.version_id)
    m2 = store.manifest(v2.version_id or "")
    assert m2.parent == v1.version_id
    assert [(b.name, b.offset, b.rows) for b in m2.batches] == [
        ("01-shoes.parquet", 0, len(split.batches[0].frame)),
        ("02-phones.parquet", len(split.batches[0].frame), len(split.batches[1].frame)),
    ]
    assert m2.rows == len(split.batches[0].frame) + len(split.batches[1].frame)
    assert m2.class_balance["counts"] == {
        c: int((pd.concat([split.batches[0].frame, split.batches[1].frame])["label"] == c).sum())
        for c in ("bad", "good")
    }
    assert m2.golden_digest == rows_digest(split.golden)
    assert store.head() == m2
    # the old version: same manifest bytes, same rows, still verified against its digest
    assert (store.versions_dir / f"{v1.version_id}.json").read_text() == v1_manifest
    pd.testing.assert_frame_equal(load_version(v1.version_id, textclf_settings), v1_rows)
    pd.testing.assert_frame_equal(v1_rows, split.batches[0].frame.astype(object))
    v2_rows = load_version(v2.version_id[:6], textclf_settings)  # a unique prefix is enough
    pd.testing.assert_frame_equal(v2_rows.iloc[: len(v1_rows)], v1_rows)


def test_a_changed_object_is_detected_on_load(textclf_settings: TextclfSettings, split) -> None:
    write_split(split, textclf_settings)
    v1 = admit(_inbox(textclf_settings, "01-shoes"), textclf_settings)
    store = DatasetStore.of(textclf_settings)
    (entry,) = store.manifest(v1.version_id or "").batches
    obj = store.objects / f"{entry.digest}.parquet"
    tampered = pd.read_parquet(obj)
    tampered.loc[0, "label"] = "bad" if tampered.loc[0, "label"] == "good" else "good"
    obj.chmod(0o644)
    tampered.to_parquet(obj, index=False)
    with pytest.raises(IngestError, match="does not match its digest"):
        load_version(v1.version_id or "", textclf_settings)
    with pytest.raises(IngestError, match="no dataset version 'nope'"):
        load_version("nope", textclf_settings)


def test_mlflow_dataset_carries_the_version_id(textclf_settings: TextclfSettings, split) -> None:
    from systems.mlops_textclf.ingest import to_mlflow_dataset

    write_split(split, textclf_settings)
    v1 = admit(_inbox(textclf_settings, "01-shoes"), textclf_settings)
    dataset = to_mlflow_dataset(v1.version_id or "", textclf_settings)
    assert dataset.digest == v1.version_id
    assert dataset.targets == "label" and len(dataset.df) == len(split.batches[0].frame)


def test_cli_batches_ingest_versions(tmp_path: Path, corpus: pd.DataFrame, monkeypatch) -> None:
    """The commands end to end on a CSV corpus configured through the environment."""
    from typer.testing import CliRunner

    from systems.mlops_textclf.cli import app

    source = tmp_path / "tiny.csv"
    corpus.to_csv(source, index=False)
    config = CONFIG.model_copy(update={"source": str(source)})
    env = {
        "MLSD_DATA_DIR": str(tmp_path / ".mlsd"),
        "MLSD_TEXTCLF_CORPUS": config.model_dump_json(),
        "MLSD_TEXTCLF_MIN_BATCH_ROWS": "10",
        "COLUMNS": "200",  # rich tables at full width
    }
    runner = CliRunner()
    made = runner.invoke(app, ["batches"], env=env)
    assert made.exit_code == 0, made.output
    assert "01-shoes" in made.output and "broken" in made.output
    done = runner.invoke(app, ["ingest"], env=env)
    assert done.exit_code == 0, done.output
    assert done.output.count("accepted") == 3 and "quarantined" in done.output
    listed = runner.invoke(app, ["versions"], env=env)
    assert listed.exit_code == 0 and "(HEAD)" in listed.output and "03-books-rest" in listed.output
    missing = runner.invoke(app, ["resubmit", "nope.parquet"], env=env)
    assert missing.exit_code != 0 and "00-broken.parquet" in str(missing.exception)
    assert (tmp_path / ".mlsd" / "textclf" / "quarantine" / "00-broken.parquet").exists()
