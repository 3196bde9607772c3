"""Hostile input against the live text classifier: its API fuzzed from its own OpenAPI schema (schemathesis
through ``common.fuzz``), with and without the admin token — no request may cause a server error and every
answer must be one the schema documents — and the common poison corpus on its feedback topic: each bad label
is dead-lettered, the reader lives on, and the good label after them is joined."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from systems.common.broker import dead_letter_topic, make_producer, make_reader
from systems.common.fuzz import fuzz_api
from systems.common.http import ServerProcess
from systems.common.poison import PRODUCER_MAX_BYTES, poison_corpus
from systems.common.predictions import encode_label
from systems.mlops_textclf.settings import TextclfSettings
from tests.integration.textclf.conftest import TOKEN

pytestmark = [pytest.mark.integration]


def test_no_request_the_schema_allows_or_forbids_causes_a_server_error(served: TextclfSettings, tmp_path: Path) -> None:
    env = served.to_env() | {"MLSD_DATA_DIR": str(served.data_dir)}
    with ServerProcess("systems.mlops_textclf.serve:create_app", env=env, log_path=tmp_path / "serve.log") as server:
        anonymous = fuzz_api(server.url, max_examples=25, semantic_422=("POST /admin/rollout",))
        admin = fuzz_api(
            server.url,
            max_examples=25,
            headers={"Authorization": f"Bearer {TOKEN}"},
            semantic_422=("POST /admin/rollout",),
        )
    for result in (anonymous, admin):
        assert result.operations >= 6 and result.requests >= 200, result.as_dict()
        assert result.server_errors == 0, result.as_dict()
        assert result.failures == [], result.as_dict()["failures"]


def test_no_poison_label_stops_the_feedback_reader(served: TextclfSettings, tmp_path: Path) -> None:
    env = served.to_env() | {"MLSD_DATA_DIR": str(served.data_dir)}
    log = tmp_path / "serve.log"
    with (
        ServerProcess("systems.mlops_textclf.serve:create_app", env=env, log_path=log) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        deadline = time.monotonic() + 30
        while not client.get("/rollout").json()["labels"]["consumer_assigned"]:
            assert time.monotonic() < deadline, "the feedback reader has no partition"
            time.sleep(0.1)
        answer = client.post("/predict", json={"text": "lovely dress, fits well"}).json()
        good = encode_label(system="textclf", prediction_id=answer["prediction_id"], label="positive", label_ts_ms=1)
        corpus = poison_corpus(json.loads(good))
        dead_letters = make_reader(served, [dead_letter_topic(served.labels_topic)], start="end")
        producer = make_producer(served, **{"message.max.bytes": PRODUCER_MAX_BYTES})
        for _, value in corpus:
            producer.send(served.labels_topic, value)
        producer.send(served.labels_topic, good)
        producer.close()
        deadline = time.monotonic() + 30
        while (labels := client.get("/rollout").json()["labels"])["joined"] < 1:
            assert time.monotonic() < deadline, labels
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200
    letters = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(letters) < len(corpus) // 2:
        letters += dead_letters.poll(timeout_s=0.5, max_records=1000)
    dead_letters.close()
    # the rest are labels the schema allows (a missing optional field, another label type): read, unmatched
    assert len(letters) >= len(corpus) // 2, (len(letters), len(corpus))
    assert labels["joined"] == 1
