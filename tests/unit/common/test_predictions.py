"""The spine's record formats: what the fast encoder writes is a valid record, readers reject what they cannot
read, and the publisher never blocks its caller (it drops and counts instead)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from systems.common.predictions import (
    SCHEMA_VERSION,
    LabelRecord,
    PredictionPublisher,
    PredictionRecord,
    encode_label,
    encode_prediction,
)
from systems.common.proc import free_port
from systems.common.settings import MlsdSettings

pytestmark = pytest.mark.unit

scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53), st.text(max_size=20), st.none()
)


@settings(max_examples=200, deadline=None)
@given(
    features=st.dictionaries(st.text(min_size=1, max_size=12), scalars, max_size=25),
    score=st.floats(0, 1),
    ts=st.integers(0, 2**53 - 1),
    latency=st.floats(0, 1e6),
)
def test_encoded_prediction_is_a_valid_record_with_the_same_values(features, score, ts, latency) -> None:  # type: ignore[no-untyped-def]
    raw = encode_prediction(
        system="fraud",
        model_name="m",
        model_version="3",
        prediction_id="p-1",
        event_ts_ms=ts,
        features=features,
        output={"score": score, "items": [1, 2, 3]},
        latency_ms=latency,
    )
    rec = PredictionRecord.model_validate_json(raw)
    assert rec.schema_version == SCHEMA_VERSION and rec.event_ts_ms == ts
    assert rec.features == features and rec.output["score"] == score and rec.latency_ms == latency


def test_numpy_values_encode_like_python_values() -> None:
    x = np.array([0.5, 1.25], dtype=np.float64)
    a = encode_prediction(
        system="s", model_name="m", model_version="1", prediction_id="1", event_ts_ms=np.int64(5),
        features={"a": x[0], "b": np.int64(3)}, output={"v": x}, latency_ms=np.float32(0.5),
    )  # fmt: skip
    rec = PredictionRecord.model_validate_json(a)
    assert rec.features == {"a": 0.5, "b": 3} and rec.output["v"] == [0.5, 1.25] and rec.event_ts_ms == 5


def test_a_newer_schema_version_is_rejected_and_unknown_fields_are_ignored() -> None:
    raw = encode_prediction(
        system="s", model_name="m", model_version="1", prediction_id="1", event_ts_ms=1, output={}, latency_ms=0
    )
    newer = raw.replace(
        f'"schema_version":{SCHEMA_VERSION}'.encode(), f'"schema_version":{SCHEMA_VERSION + 1}'.encode()
    )
    with pytest.raises(ValidationError, match="newer than this reader"):
        PredictionRecord.model_validate_json(newer)
    extended = raw[:-1] + b',"added_in_v1_1":true}'
    assert PredictionRecord.model_validate_json(extended).prediction_id == "1"


def test_prediction_record_bounds() -> None:
    ok = {"system": "s", "model_name": "m", "model_version": "1", "prediction_id": "1", "event_ts_ms": 1}
    with pytest.raises(ValidationError, match="latency_ms"):
        PredictionRecord(**ok, output={}, latency_ms=float("inf"))
    with pytest.raises(ValidationError, match="latency_ms"):  # finite, but no latency: a broken clock
        PredictionRecord(**ok, output={}, latency_ms=1e30)
    assert PredictionRecord(**ok, output={}, latency_ms=3_600_000.0).latency_ms == 3_600_000.0  # an hour's backlog
    with pytest.raises(ValidationError, match="event_ts_ms"):
        PredictionRecord(**{**ok, "event_ts_ms": 10**30}, output={}, latency_ms=1)
    with pytest.raises(ValidationError, match="prediction_id"):
        PredictionRecord(**{**ok, "prediction_id": "x" * 1000}, output={}, latency_ms=1)


def test_a_label_must_be_joinable() -> None:
    with pytest.raises(ValidationError, match="prediction_id or an entity_key"):
        LabelRecord.model_validate_json(encode_label(system="s", label=1, label_ts_ms=5))
    by_entity = LabelRecord.model_validate_json(encode_label(system="s", label="pos", label_ts_ms=5, entity_key="u1"))
    assert by_entity.entity_key == "u1" and by_entity.label == "pos"
    with pytest.raises(ValidationError, match="finite"):
        LabelRecord(system="s", label=float("nan"), label_ts_ms=1, prediction_id="1")


def test_publisher_never_blocks_and_counts_what_it_drops_with_no_broker() -> None:
    """Nobody listens on the port: every offer returns at once, the queue bound holds, the drops are exported."""
    registry = CollectorRegistry()
    s = MlsdSettings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    pub = PredictionPublisher(s, system="t", registry=registry, maxsize=100).start()
    took = []
    for i in range(5000):
        t0 = time.perf_counter()
        pub.offer_prediction(
            model_name="m", model_version="1", prediction_id=str(i), event_ts_ms=1, output={"y": 1}, latency_ms=0.1
        )
        took.append(time.perf_counter() - t0)
    pub.close(timeout_s=1.0)
    stats = pub.stats()
    assert stats.offered == 5000 and stats.dropped_queue_full >= 5000 - 100 - stats.published - 1  # -1: the one in hand
    # a blocking offer would wait for the broker (seconds: the delivery timeout); scheduling noise on a busy
    # machine is tens of ms at worst
    assert max(took) < 1.0, f"an offer blocked for {max(took) * 1000:.1f} ms"
    dropped = registry.get_sample_value("mlsd_predictions_dropped_total", {"system": "t", "reason": "queue_full"})
    assert dropped == stats.dropped_queue_full > 0
    assert registry.get_sample_value("mlsd_predictions_broker_up", {"system": "t"}) == 0


def test_offer_returns_even_when_nothing_drains_the_queue() -> None:
    """No sender thread at all (a wedged producer): offers still return, and everything past the bound drops."""
    registry = CollectorRegistry()
    pub = PredictionPublisher(MlsdSettings(), system="t", registry=registry, maxsize=10)  # never started
    for i in range(1000):
        pub.offer_prediction(
            model_name="m", model_version="1", prediction_id=str(i), event_ts_ms=1, output={}, latency_ms=0.0
        )
    assert pub.stats().dropped_queue_full == 990 and pub.queue.qsize() == 10
    assert registry.get_sample_value("mlsd_predictions_queue_depth", {"system": "t"}) == 10
