"""Messages on the fraud topics (JSON, validated by pydantic on the way in).

transactions (key = customer_id)  ->  scorer  ->  decisions (key = customer_id)
                                           \\->  predictions (generic record for the monitoring system)
labels (key = tx_id, a chargeback or "no chargeback" after the label delay)  ->  label store, scorers
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Transaction(BaseModel):
    """One card payment to authorise. Unknown fields are rejected (a producer bug, not noise)."""

    model_config = ConfigDict(extra="forbid")

    tx_id: int = Field(ge=0)
    customer_id: int = Field(ge=0)
    terminal_id: int = Field(ge=0)
    ts_s: int = Field(gt=0, description="event time, unix seconds")
    amount: float = Field(ge=0, le=1_000_000)
    sent_ms: float | None = Field(default=None, description="wall-clock produce time, for end-to-end latency")

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


class Label(BaseModel):
    """A matured label: fraud=1 is a chargeback; fraud=0 means no chargeback within the delay."""

    model_config = ConfigDict(extra="forbid")

    tx_id: int = Field(ge=0)
    customer_id: int = Field(ge=0)
    terminal_id: int = Field(ge=0)
    ts_s: int = Field(gt=0, description="the transaction's event time")
    fraud: int = Field(ge=0, le=1)
    label_ts_s: int = Field(gt=0)


class PredictionRecord(BaseModel):
    """The generic per-prediction record every serving system publishes for monitoring."""

    system: str
    prediction_id: str
    model_version: str
    features: dict[str, float]
    output: dict[str, float | str]
    latency_ms: float
    ts_ms: int


class ScoreResponse(BaseModel):
    tx_id: int
    decision: Literal["approve", "block"]
    score: float
    threshold: float
    model_version: str
    reasons: list[dict[str, float | str]]
    latency_ms: float
