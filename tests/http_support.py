"""Helpers for tests that drive a real HTTP service: timed sequential requests and the publisher's counters."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx


def timed_requests(client: httpx.Client, path: str, *, n: int, request: Callable[[int], dict[str, Any]]) -> list[float]:
    """``n`` sequential requests (``request(i)`` gives ``client.request`` keyword arguments); sorted ms each.

    Every answer must be a 200: a slow answer is measured, a failed one fails the test.
    """
    took = []
    for i in range(n):
        kwargs = {"method": "GET", **request(i)}
        t0 = time.perf_counter()
        r = client.request(url=path, **kwargs)
        took.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return sorted(took)


def quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def dropped_records(metrics: str) -> float:
    """Prediction records the common publisher lost, whatever the reason (queue full, delivery failed)."""
    found = re.findall(r'^mlsd_predictions_dropped_total\{reason="\w+",system="\w+"\} (\S+)$', metrics, re.M)
    return sum(float(v) for v in found)


def published_records(metrics: str) -> float:
    found = re.findall(r"^mlsd_predictions_published_total\{system=\"\w+\"\} (\S+)$", metrics, re.M)
    return sum(float(v) for v in found)
