"""Event-time windows: closing on the watermark, late records, drift against a reference, data quality,
estimates at close and realised metrics (overall and per slice) re-emitted as labels arrive."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from systems.common.predictions import LabelRecord, PredictionRecord
from systems.monitoring.ingest import MonitorState
from systems.monitoring.performance import MetricConfig, metric_map
from systems.monitoring.results import WindowResult
from systems.monitoring.windows import (
    Reference,
    WindowConfig,
    amount_band,
    load_references,
    load_version_references,
    reference_path,
    version_reference_path,
)

pytestmark = pytest.mark.unit

S = 1000
T0 = 1_700_000_000_000  # a multiple of 10 s: windows start on it


def pred(
    ts_ms: int,
    pid: str,
    *,
    features: dict[str, Any] | None = None,
    score: float = 0.5,
    decision: str = "approve",
    latency_ms: float = 1.0,
    version: str = "1",
    system: str = "fraud",
    output: dict[str, Any] | None = None,
    entity: str | None = None,
) -> PredictionRecord:
    return PredictionRecord(
        system=system,
        model_name="m",
        model_version=version,
        prediction_id=pid,
        entity_key=entity,
        event_ts_ms=ts_ms,
        features=features if features is not None else {"amount": 20.0},
        output=output if output is not None else {"score": score, "decision": decision},
        latency_ms=latency_ms,
    )


def label(pid: str | None, value: float | int | str, ts_ms: int, **kw: Any) -> LabelRecord:
    return LabelRecord(system=kw.pop("system", "fraud"), prediction_id=pid, label=value, label_ts_ms=ts_ms, **kw)


def state(**kw: Any) -> MonitorState:
    metrics = kw.pop("metrics", MetricConfig(min_samples=1, bootstrap_resamples=20))
    fields: dict[str, Any] = {
        "window_s": 10.0,
        "allowed_lateness_s": 2.0,
        "label_wait_s": 100.0,
        "update_interval_s": 0.0,
        "metrics": metrics,
    }
    refs = kw.pop("references", None)
    return MonitorState(windows=WindowConfig(**(fields | kw)), references=refs)


def closed(results: Sequence[WindowResult]) -> list[tuple[int, int, int, int]]:
    """(start s, count, late, revision) relative to T0."""
    return [((r.key.start_ms - T0) // S, r.count, r.late, r.revision) for r in results]


def test_a_tumbling_window_closes_when_the_watermark_passes_its_end() -> None:
    st = state()
    assert st.add_predictions([pred(T0 + i * S, f"p{i}", latency_ms=float(i)) for i in range(1, 10)]) == []
    assert st.add_predictions([pred(T0 + 11_500, "p11")]) == []  # watermark 9.5 s: not yet
    (r,) = st.add_predictions([pred(T0 + 12_500, "p12")])  # watermark 10.5 s >= end 10 s
    assert closed([r]) == [(0, 9, 0, 0)]
    assert r.latency_ms_p99 == pytest.approx(np.percentile(np.arange(1.0, 10.0), 99))
    assert r.output_kind == "binary" and r.drift == {}  # no reference: no drift
    # A record for the closed window is late: counted, re-emitted, not used.
    (again,) = st.add_predictions([pred(T0 + 5 * S, "late")])
    assert closed([again]) == [(0, 9, 1, 1)]
    assert st.windows.stats.late == 1


def test_records_within_the_allowed_lateness_still_land_in_their_window() -> None:
    st = state()
    st.add_predictions([pred(T0 + 1 * S, "a"), pred(T0 + 11 * S, "b")])  # watermark 9 s
    st.add_predictions([pred(T0 + 9 * S, "c")])  # out of order by 2 s: on time
    (r,) = st.add_predictions([pred(T0 + 13 * S, "d")])
    assert closed([r]) == [(0, 2, 0, 0)]


def test_sliding_windows_are_merges_of_their_panes() -> None:
    st = state(slide_s=5.0)
    results = st.add_predictions([pred(T0 + t * S, f"p{t}") for t in (1, 6, 7, 11, 16)])
    assert sorted((r.key.start_ms - T0) // S for r in results) == [-5, 0]  # watermark 14 s
    results += st.flush()
    got = sorted((r.key.start_ms - T0) // S for r in results)
    counts = {(r.key.start_ms - T0) // S: r.count for r in results}
    assert got == [-5, 0, 5, 10, 15]
    assert counts == {-5: 1, 0: 3, 5: 3, 10: 2, 15: 1}  # [0,10) holds 1, 6, 7; [5,15) holds 6, 7, 11
    assert all(r.key.end_ms - r.key.start_ms == 10 * S for r in results)


def test_series_are_per_model_version_and_the_watermark_per_system() -> None:
    st = state()
    st.add_predictions([pred(T0 + S, "a", version="1"), pred(T0 + 2 * S, "b", version="2")])
    st.add_predictions([pred(T0 + 3 * S, "r1", system="recsys", output={"item_ids": [1, 2]})])
    results = st.add_predictions([pred(T0 + 20 * S, "c", version="2")])  # fraud's watermark moves, recsys's not
    assert sorted((r.key.system, r.key.model_version, r.count) for r in results) == [
        ("fraud", "1", 1),
        ("fraud", "2", 1),
    ]


def _normal_records(
    n: int, *, seed: int, shift: float = 0.0, t0: int = T0, prefix: str = "p"
) -> list[PredictionRecord]:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.0, n) * (1.0 + shift)
    hour = rng.normal(12.0, 4.0, n) + 6.0 * shift
    channel = rng.choice(["web", "pos", "atm"], n, p=[0.5, 0.4, 0.1])
    score = rng.beta(1, 20, n)
    return [
        pred(
            t0 + i * 5,  # 200 records per event-time second
            f"{prefix}{i}",
            features={"amount": float(amount[i]), "hour": float(hour[i]), "channel": str(channel[i])},
            score=float(score[i]),
        )
        for i in range(n)
    ]


def test_a_known_shift_is_reported_as_drift_and_a_clean_stream_is_not(tmp_path: Path) -> None:
    ref = Reference.from_records(_normal_records(5000, seed=0))
    ref.save(reference_path(tmp_path, "fraud", "m"))  # the persisted form is what a service loads
    refs = load_references(tmp_path)
    assert list(refs) == [("fraud", "m")]
    clean, shifted = state(references=refs), state(references=refs)
    clean.add_predictions(_normal_records(2000, seed=1))  # 10 s of events: exactly one window
    shifted.add_predictions(_normal_records(2000, seed=1, shift=1.0))
    (c,) = clean.flush()
    (d,) = shifted.flush()
    assert c.count == d.count == 2000
    assert c.drift["dataset_drift"] is False and c.drift["drifted_columns"] == []
    assert d.drift["dataset_drift"] is True
    assert set(d.drift["drifted_columns"]) == {"amount", "hour"}  # the channel mix did not move
    assert d.drift["rows"] == 2000 and d.drift["min_samples_met"] is True


def test_data_quality_reports_nulls_and_unseen_categories() -> None:
    ref = Reference.from_records(_normal_records(2000, seed=0))
    st = state(references={("fraud", "m"): ref})
    broken = [
        pred(
            T0 + i * 10,
            f"b{i}",
            features={
                "amount": None if i % 4 == 0 else 10.0,
                "hour": 12.0,
                "channel": "crypto" if i % 5 == 0 else "web",
            },
        )
        for i in range(100)
    ]
    broken[1] = pred(T0 + 10, "b1", features={"hour": 12.0, "channel": "web"})  # the key itself missing
    st.add_predictions(broken)
    (r,) = st.flush()
    f = r.data_quality["features"]
    assert f["amount"]["null_share"] == pytest.approx(26 / 100)
    assert f["hour"]["null_share"] == 0.0 and f["channel"]["unseen_share"] == pytest.approx(20 / 100)
    assert r.data_quality["max_null_share"] == pytest.approx(0.26)


def test_realised_metrics_arrive_with_the_labels_and_the_window_ends_final() -> None:
    st = state(label_wait_s=30.0)
    scores = [0.9, 0.8, 0.3, 0.1]
    st.add_predictions([pred(T0 + (i + 1) * S, f"p{i}", score=s) for i, s in enumerate(scores)])
    (r0,) = st.add_predictions([pred(T0 + 13 * S, "next")])
    assert (r0.revision, r0.labelled, r0.realised) == (0, 0, [])
    assert metric_map(r0.estimated)["prevalence"].value == pytest.approx(np.mean(scores))  # CBPE at close
    (r1,) = st.add_labels([label("p0", 1, T0 + 20 * S), label("p1", 0, T0 + 21 * S)])
    assert (r1.revision, r1.labelled) == (1, 2) and r1.label_delay_s_p50 == pytest.approx(19.0)
    (r2,) = st.add_labels([label("p2", 1, T0 + 22 * S), label("p3", 0, T0 + 22 * S), label("p3", 0, T0 + 22 * S)])
    m = metric_map(r2.realised)
    assert r2.revision == 2 and r2.labelled == 4
    assert m["ap"].value == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert st.join.stats.labels_duplicate == 1  # the re-delivered label was seen, and changed nothing
    # The label wait (30 s after the window's end) passes: one last, final revision; the window is dropped.
    results = st.add_predictions([pred(T0 + 45 * S, "far")])
    final = [r for r in results if r.key.start_ms == T0]
    assert [(r.revision, r.final, r.labelled) for r in final] == [(3, True, 4)]
    assert all(r.key.start_ms != T0 for r in st.windows.kept())
    st.add_predictions([pred(T0 + 5 * S, "very-late")])  # past the join horizon and every kept window
    assert (st.join.stats.predictions_too_old, st.windows.stats.late_dropped) == (1, 1)


def test_slices_get_their_own_metrics_under_the_same_guard() -> None:
    st = state(metrics=MetricConfig(min_samples=3, bootstrap_resamples=10))
    amounts = [5.0, 5.0, 5.0, 5.0, 500.0, 500.0]  # four small spenders, two large ones
    recs = [pred(T0 + (i + 1) * 100, f"p{i}", features={"amount": a}, score=0.2) for i, a in enumerate(amounts)]
    st.add_predictions(recs)
    st.flush()
    (r,) = st.add_labels([label(f"p{i}", int(i in (0, 4)), T0 + 60 * S) for i in range(6)])
    assert amount_band({"amount": 5.0}) == "<10" and amount_band({"amount": 500.0}) == "200-1k"
    small, large = metric_map(r.slices["amount_band=<10"]), metric_map(r.slices["amount_band=200-1k"])
    assert small["prevalence"].value == pytest.approx(0.25) and small["prevalence"].n == 4
    assert large["prevalence"].value is None and large["prevalence"].n == 2  # under min_samples=3


def test_multiclass_and_ranked_outputs_get_their_own_metrics() -> None:
    st = state()
    out = {"label": "pos", "classes": ["neg", "pos"], "probs": [0.2, 0.8]}
    st.add_predictions(
        [
            pred(T0 + S, "t1", system="textclf", output=out, features={"department": "Tops"}),
            pred(T0 + 2 * S, "t2", system="textclf", output=out, features={"department": "Dresses"}),
            pred(T0 + S, "r1", system="recsys", output={"item_ids": [5, 6]}, entity="u1", features={}),
            pred(T0 + 2 * S, "r2", system="recsys", output={"item_ids": [7, 8]}, entity="u2", features={}),
        ]
    )
    by_system = {r.key.system: r for r in st.flush()}
    assert metric_map(by_system["textclf"].estimated)["accuracy"].value == pytest.approx(0.8)
    results = st.add_labels(
        [
            label("t1", "pos", T0 + 5 * S, system="textclf"),
            label("t2", "neg", T0 + 5 * S, system="textclf"),
            label(None, 6, T0 + 5 * S, system="recsys", entity_key="u1"),  # a click on item 6 by user 1
            label(None, 1, T0 + 5 * S, system="recsys", entity_key="u2"),  # user 2 engaged with item 1: a miss
        ]
    )
    latest = {r.key.system: r for r in results}
    text, rec = metric_map(latest["textclf"].realised), metric_map(latest["recsys"].realised)
    assert text["accuracy"].value == 0.5 and text["macro_f1"].value == pytest.approx(1 / 3)
    assert rec["hit_rate"].value == 0.5 and latest["recsys"].output_kind == "ranked"
    assert set(latest["textclf"].slices) == {"department=Tops", "department=Dresses"}


def test_window_config_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="multiple"):
        WindowConfig(window_s=10.0, slide_s=3.0)
    with pytest.raises(ValueError, match="slice"):
        WindowConfig(slices={"fraud": "no_such_function"})


def _windows_drift(results: Sequence[WindowResult]) -> list[tuple[int, bool | None]]:
    """(start s, dataset drift or None when not judged) of each first emission, by start."""
    firsts = sorted((r for r in results if r.revision == 0), key=lambda r: r.key.start_ms)
    return [((r.key.start_ms - T0) // S, r.drift.get("dataset_drift") if r.drift else None) for r in firsts]


def _versioned(records: Sequence[PredictionRecord], version: str) -> list[PredictionRecord]:
    return [
        r.model_copy(update={"model_version": version, "prediction_id": f"{version}-{r.prediction_id}"})
        for r in records
    ]


def test_a_rebaselined_version_is_judged_against_its_own_first_window(tmp_path: Path) -> None:
    ref = Reference.from_records(_normal_records(5000, seed=0)).with_metrics({"ap": 0.7}, {"amount_band=<10:ap": 0.5})
    st = state(references={("fraud", "m"): ref})
    saved: list[tuple[tuple[str, str, str], Reference]] = []
    st.windows.on_reference = lambda key, r: saved.append((key, r))
    assert st.windows.rebaseline("fraud", "m", "2") is True
    assert st.windows.rebaseline("fraud", "m", "2") is False  # asking twice starts nothing new
    shifted = _normal_records(10_000, seed=1, shift=1.0)  # 50 s of events: five windows, all shifted
    interleaved = [r for pair in zip(_versioned(shifted, "2"), _versioned(shifted, "3"), strict=True) for r in pair]
    out = st.add_predictions(interleaved) + st.flush()
    by_version = {v: _windows_drift([r for r in out if r.key.model_version == v]) for v in ("2", "3")}
    # Version 3 keeps the model's reference: every window drifts. Version 2's first window becomes its
    # reference once the watermark has passed it, and the windows after it are judged against that.
    assert by_version["3"] == [(0, True), (10, True), (20, True), (30, True), (40, True)]
    assert by_version["2"] == [(0, True), (10, False), (20, False), (30, False), (40, False)]
    ((key, fitted),) = saved
    assert key == ("fraud", "m", "2") and st.windows.stats.rebaselined == 1
    kinds = {c.name: (type(c), c.role) for c in ref.schema.columns}
    assert {c.name: (type(c), c.role) for c in fitted.schema.columns} == kinds  # the predecessor's columns
    assert dict(fitted.metrics) == {"ap": 0.7} and dict(fitted.slice_metrics) == {"amount_band=<10:ap": 0.5}
    # The fitted layout follows the new data: a tripled amount's bins now span the tripled range.
    assert fitted.schema["amount"].edges[-1] > 1.5 * ref.schema["amount"].edges[-1]  # type: ignore[union-attr]

    # Persisted and loaded, it is that version's reference from its first record on (a restart keeps it).
    fitted.save(version_reference_path(tmp_path, *key))
    ref.save(reference_path(tmp_path, "fraud", "m"))
    assert list(load_version_references(tmp_path)) == [key] and list(load_references(tmp_path)) == [("fraud", "m")]
    again = MonitorState(
        windows=st.windows.config,
        references=load_references(tmp_path),
        version_references=load_version_references(tmp_path),
    )
    out = again.add_predictions(_versioned(_normal_records(4000, seed=2, shift=1.0), "2")) + again.flush()
    assert _windows_drift(out) == [(0, False), (10, False)]


def test_a_window_straddling_a_rebaseline_is_not_judged() -> None:
    ref = Reference.from_records(_normal_records(5000, seed=0))
    records = _versioned(_normal_records(10_000, seed=1, shift=1.0), "2")
    verdicts = {}
    for chunk_rows in (4096, 300):
        st = state(references={("fraud", "m"): ref}, slide_s=5.0, chunk_rows=chunk_rows)  # 10 s every 5 s
        st.windows.rebaseline("fraud", "m", "2")
        out = [r for i in range(0, len(records), 500) for r in st.add_predictions(records[i : i + 500])]
        verdicts[chunk_rows] = dict(_windows_drift(out + st.flush()))
    # The reference is the window 0..10 s. With rows still buffered when it was fitted, panes from 10 s on are
    # summarised against it; with 300-row chunks the 10 s pane was partly summarised against the old one
    # already, so the switch waits a pane. A window holding panes of both sides reports no drift, not a mix.
    after = dict.fromkeys(range(20, 50, 5), False)
    assert verdicts[4096] == {-5: True, 0: True, 5: None, 10: False, 15: False} | after
    assert verdicts[300] == {-5: True, 0: True, 5: True, 10: None, 15: False} | after


def test_rebaseline_refuses_nonsense_and_a_version_with_its_own_reference() -> None:
    ref = Reference.from_records(_normal_records(2000, seed=0))
    st = MonitorState(
        windows=WindowConfig(window_s=10.0),
        references={("fraud", "m"): ref},
        version_references={("fraud", "m", "9"): ref},
    )
    with pytest.raises(ValueError, match=">= 1"):
        st.windows.rebaseline("fraud", "m", "2", windows=0)
    assert st.windows.rebaseline("fraud", "m", "9") is False
