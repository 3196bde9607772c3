"""Messages on the fraud topics (JSON, validated by pydantic on the way in).

transactions (key = customer_id)  ->  scorer  ->  decisions (key = customer_id)
                                           \\->  predictions (systems.common.predictions.PredictionRecord)
labels (key = tx_id, a Chargeback: the shared LabelRecord)  ->  label store, scorers, monitoring
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from systems.common.predictions import LabelRecord, encode_label

MAX_ID = 2**63 - 1
"""Ids are signed 64-bit integers end to end (sqlite INTEGER, Postgres BIGINT, numpy int64): larger ones are
rejected at the edge instead of overflowing a store write."""
MAX_TS_S = 2**40
"""An absolute bound on event times (year ~36,800): keeps day arithmetic in int64. The real bound is the window
around the stream's clock (``FraudSettings.max_event_lead_s`` / ``max_event_lag_s``), checked by the scorer and
the API, since only they know the clock."""

Id = Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]


class Transaction(BaseModel):
    """One card payment to authorise. Unknown fields are rejected (a producer bug, not noise)."""

    model_config = ConfigDict(extra="forbid")

    tx_id: Id
    customer_id: Id
    terminal_id: Id
    ts_s: int = Field(gt=0, lt=MAX_TS_S, strict=True, description="event time, unix seconds")
    amount: float = Field(ge=0, le=1_000_000)
    sent_ms: float | None = Field(
        default=None, ge=0, lt=2**53, description="wall-clock produce time, for end-to-end latency"
    )

    @field_validator("amount")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("amount must be finite")
        return v


class Decision(BaseModel):
    tx_id: int
    customer_id: int
    score: float  # calibrated probability of fraud
    decision: Literal["approve", "block"]
    threshold: float
    model_version: str
    latency_ms: float | None  # produce -> decision, when the transaction carried sent_ms
    decided_ms: int


class Chargeback(LabelRecord):
    """A matured label on the ``labels`` topic, in the shared :class:`LabelRecord` shape.

    ``prediction_id`` is the transaction id, ``entity_key`` the customer, ``label`` 1 for a chargeback and 0
    for "no chargeback within the delay", ``event_ts_ms`` the transaction's time and
    ``attributes["terminal_id"]`` the terminal (the scorers' terminal-risk state needs it). The validators
    below make a label that the fraud system cannot use fail decoding, so it reaches ``labels.dlq`` with the
    reason instead of failing later inside a store write.
    """

    @model_validator(mode="after")
    def _fraud_fields(self) -> Chargeback:
        for name, value in (("prediction_id", self.prediction_id), ("entity_key", self.entity_key)):
            if value is None or not value.isdigit() or int(value) >= 2**63:
                raise ValueError(f"{name} must be a non-negative 64-bit integer id, got {value!r}")
        if self.label not in (0, 1) or isinstance(self.label, str):
            raise ValueError(f"label must be 0 or 1, got {self.label!r}")
        if self.event_ts_ms is None:
            raise ValueError("event_ts_ms (the transaction's time) is required")
        if self.event_ts_ms > self.label_ts_ms:
            raise ValueError(f"event_ts_ms {self.event_ts_ms} is after label_ts_ms {self.label_ts_ms}")
        terminal = self.attributes.get("terminal_id")
        if not isinstance(terminal, int) or isinstance(terminal, bool) or not 0 <= terminal < 2**63:
            raise ValueError(f"attributes.terminal_id must be a non-negative 64-bit integer, got {terminal!r}")
        return self

    @property
    def tx_id(self) -> int:
        return int(self.prediction_id or 0)

    @property
    def customer_id(self) -> int:
        return int(self.entity_key or 0)

    @property
    def terminal_id(self) -> int:
        return int(self.attributes["terminal_id"] or 0)

    @property
    def ts_s(self) -> int:
        return int(self.event_ts_ms or 0) // 1000

    @property
    def fraud(self) -> int:
        return int(self.label)

    @property
    def label_ts_s(self) -> int:
        return self.label_ts_ms // 1000


def chargeback_json(tx_id: int, customer_id: int, terminal_id: int, ts_s: int, fraud: int, label_ts_s: int) -> bytes:
    """One :class:`Chargeback` as JSON (the shared label encoder)."""
    return encode_label(
        system="fraud",
        prediction_id=str(tx_id),
        entity_key=str(customer_id),
        label=int(fraud),
        label_ts_ms=int(label_ts_s) * 1000,
        event_ts_ms=int(ts_s) * 1000,
        attributes={"terminal_id": int(terminal_id)},
    )


class ScoreResponse(BaseModel):
    tx_id: int
    decision: Literal["approve", "block"]
    score: float
    threshold: float
    model_version: str
    reasons: list[dict[str, float | str]]
    latency_ms: float
