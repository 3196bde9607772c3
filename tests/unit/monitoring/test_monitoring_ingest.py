"""The fast decoding path accepts exactly what pydantic accepts, and a re-delivered batch counts once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from systems.common.broker import describe_error
from systems.common.predictions import LabelRecord, PredictionRecord, encode_label, encode_prediction
from systems.monitoring.ingest import FastLabelRecord, FastPredictionRecord, MonitorState
from systems.monitoring.performance import MetricConfig, metric_map
from systems.monitoring.windows import WindowConfig

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000

GOOD: dict[str, Any] = {
    "schema_version": 1,
    "system": "fraud",
    "model_name": "m",
    "model_version": "3",
    "prediction_id": "tx1",
    "entity_key": "c1",
    "event_ts_ms": T0,
    "features": {"amount": 12.5, "n": 3, "flag": True, "cat": "web", "gone": None, "ids": [1, 2, None]},
    "output": {"score": 0.25, "decision": "approve"},
    "latency_ms": 0.8,
}

VALID = [
    GOOD,
    GOOD | {"latency_ms": 2},  # an int latency becomes a float
    GOOD | {"extra_field": {"nested": 1}},  # unknown fields are ignored
    {k: v for k, v in GOOD.items() if k not in ("entity_key", "features", "schema_version")},  # defaults
    GOOD | {"event_ts_ms": 5.0},  # pydantic accepts an integral float; the fast check hands it over
]
INVALID = [
    GOOD | {"schema_version": 2},
    GOOD | {"system": ""},
    GOOD | {"prediction_id": "x" * 201},
    GOOD | {"event_ts_ms": -1},
    GOOD | {"event_ts_ms": 2**53},
    GOOD | {"latency_ms": -0.1},
    GOOD | {"features": {"nested": {"a": 1}}},
    GOOD | {"output": {"ids": [[1]]}},
    {k: v for k, v in GOOD.items() if k != "output"},
    [GOOD],
]


@pytest.mark.parametrize("doc", VALID)
def test_the_fast_path_decodes_valid_records_exactly_as_pydantic(doc: dict[str, Any]) -> None:
    raw = orjson.dumps(doc)
    fast, slow = FastPredictionRecord.model_validate_json(raw), PredictionRecord.model_validate_json(raw)
    assert isinstance(fast, PredictionRecord)
    assert fast.model_dump() == slow.model_dump()
    assert type(fast.latency_ms) is float


@pytest.mark.parametrize("doc", INVALID)
def test_the_fast_path_rejects_with_pydantics_own_reason(doc: Any) -> None:
    raw = orjson.dumps(doc)
    with pytest.raises(ValidationError) as fast:
        FastPredictionRecord.model_validate_json(raw)
    with pytest.raises(ValidationError) as slow:
        PredictionRecord.model_validate_json(raw)
    assert describe_error(fast.value) == describe_error(slow.value)


def test_not_json_at_all_is_rejected_too() -> None:
    with pytest.raises(ValidationError, match="Invalid JSON"):
        FastPredictionRecord.model_validate_json(b"\x00not json")


@pytest.mark.parametrize(
    "raw",
    [
        encode_label(system="fraud", prediction_id="tx1", label=1, label_ts_ms=T0, event_ts_ms=T0 - 5),
        encode_label(system="recsys", entity_key="u1", label="item-7", label_ts_ms=T0, attributes={"r": 4.0}),
        encode_label(system="textclf", prediction_id="p", label=2.5, label_ts_ms=T0),
        orjson.dumps({"system": "fraud", "label": 1, "label_ts_ms": T0}),  # neither id nor entity
        orjson.dumps({"system": "fraud", "prediction_id": "a", "label": [1], "label_ts_ms": T0}),
        orjson.dumps({"system": "fraud", "prediction_id": "", "label": 1, "label_ts_ms": T0}),
        orjson.dumps({"system": "fraud", "prediction_id": "a", "label": True, "label_ts_ms": T0}),
    ],
)
def test_labels_decode_alike_on_both_paths(raw: bytes) -> None:
    try:
        slow = LabelRecord.model_validate_json(raw)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as fast_exc:
            FastLabelRecord.model_validate_json(raw)
        assert describe_error(fast_exc.value) == describe_error(exc)
        return
    assert FastLabelRecord.model_validate_json(raw).model_dump() == slow.model_dump()


def _batch(n: int, offset: int = 0) -> list[PredictionRecord]:
    return [
        FastPredictionRecord.model_validate_json(
            encode_prediction(
                system="fraud",
                model_name="m",
                model_version="1",
                prediction_id=f"tx{i}",
                event_ts_ms=T0 + i * 100,
                features={"amount": float(i)},
                output={"score": (i % 10) / 10, "decision": "block" if i % 10 >= 8 else "approve"},
                latency_ms=1.0,
            )
        )
        for i in range(offset, offset + n)
    ]


def test_a_redelivered_batch_does_not_double_count() -> None:
    """At-least-once delivery replays the batch after the last commit: the state must not change."""
    st = MonitorState(
        windows=WindowConfig(
            window_s=10.0,
            allowed_lateness_s=1.0,
            label_wait_s=600.0,
            update_interval_s=0.0,
            metrics=MetricConfig(min_samples=1, bootstrap_resamples=10),
        ),
    )
    first = _batch(200)
    st.add_predictions(first)
    st.add_predictions(first[100:])  # the replay after a crash between handling and commit
    labels = [
        LabelRecord(system="fraud", prediction_id=f"tx{i}", label=int(i % 10 >= 8), label_ts_ms=T0 + 60_000)
        for i in range(200)
    ]
    st.add_labels(labels)
    st.add_labels(labels[150:])
    st.flush()
    assert st.join.stats.predictions_duplicate == 100 and st.join.stats.labels_duplicate == 50
    assert st.counters.predictions == 300 and st.counters.labels == 250  # every record handled, and seen
    windows = list(st.latest.values())  # the newest revision of each of the two 10-s windows
    assert len(windows) == 2
    assert sum(r.count for r in windows) == 200 and sum(r.labelled for r in windows) == 200
    for r in windows:
        assert metric_map(r.realised)["precision"].value == 1.0  # decisions match labels: no double-counted rows
