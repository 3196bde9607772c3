"""The fraud edges: message schemas bound what they accept, and a scorer whose label reader is down says so."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from systems.common.broker import SupervisedLoop
from systems.fraud.schemas import Chargeback, Transaction, chargeback_json
from systems.fraud.stream import ScorerHealth

pytestmark = pytest.mark.unit

GOOD = {"tx_id": 1, "customer_id": 2, "terminal_id": 3, "ts_s": 1_600_000_000, "amount": 12.5}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tx_id", 2**63),  # sqlite's OverflowError in the store write stopped the scorer for good
        ("customer_id", 2**63),
        ("terminal_id", -1),
        ("tx_id", True),
        ("ts_s", 1e30),  # a day index beyond int64 in the feature state
        ("ts_s", 2**40),
        ("amount", float("inf")),
        ("sent_ms", float("nan")),
    ],
)
def test_a_transaction_outside_the_bounds_is_rejected(field: str, value: object) -> None:
    Transaction.model_validate(GOOD)  # the good one passes
    with pytest.raises(ValidationError) as err:
        Transaction.model_validate({**GOOD, field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_the_largest_64_bit_id_is_accepted() -> None:
    assert Transaction.model_validate({**GOOD, "tx_id": 2**63 - 1}).tx_id == 2**63 - 1


def test_a_label_cannot_mature_before_its_transaction() -> None:
    Chargeback.model_validate_json(chargeback_json(1, 2, 3, 1_600_000_000, 1, 1_600_600_000))
    with pytest.raises(ValidationError, match="after label_ts_ms"):
        Chargeback.model_validate_json(chargeback_json(1, 2, 3, 1_600_000_000, 1, 1_599_000_000))


def test_a_scorer_whose_label_reader_is_down_is_not_ready() -> None:
    health = ScorerHealth()
    health.assigned = True
    health.labels_caught_up.set()
    loop = SupervisedLoop("fraud-label-reader", lambda: None, stop=threading.Event())
    health.labels = loop
    loop.healthy = True
    assert health.ready() and health.reason() == ""
    loop.healthy, loop.last_error = False, "ValueError: poison"
    assert not health.ready() and "label reader is down (ValueError: poison)" in health.reason()
    loop.healthy = True
    health.scoring = False
    assert not health.ready() and "scoring loop stopped" in health.reason()
