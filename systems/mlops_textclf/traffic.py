"""Traffic: simulated users for the demo, the bench and the tests — requests at a rate, and their later verdicts.

A user sends a review to ``POST /predict`` and, some time later, the truth arrives (a return, a rating, a
support ticket): :class:`FeedbackSimulator` publishes each answered request's true label as a ``LabelRecord``
on ``textclf.feedback`` after ``delay_s``. :func:`drive_rollout` runs open-loop load (the common harness, so
queueing shows in p99) while it starts a rollout through the admin API and waits for its outcome.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from systems.common.bench import LoadResult, http_load, run_async
from systems.common.broker import make_producer, publish
from systems.common.predictions import LabelRecord
from systems.mlops_textclf.settings import TextclfSettings


class FeedbackSimulator:
    """Publishes ``(prediction_id, true label)`` pairs ``delay_s`` after they are answered, from a thread."""

    def __init__(self, settings: TextclfSettings, *, delay_s: float = 1.0) -> None:
        self.settings = settings
        self.delay_s = delay_s
        self._due: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="textclf-feedback-sim", daemon=True)
        self.published = 0
        self.error: BaseException | None = None

    def __enter__(self) -> FeedbackSimulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None and exc[0] is None:  # a silent thread death would look like "no labels came"
            raise RuntimeError(f"the feedback simulator stopped after {self.published} labels") from self.error

    def answered(self, prediction_id: str, label: str) -> None:
        with self._lock:
            heapq.heappush(self._due, (time.monotonic() + self.delay_s, prediction_id, label))

    def _run(self) -> None:
        try:
            self._publish_due()
        except BaseException as exc:
            self.error = exc

    def _publish_due(self) -> None:
        producer = make_producer(self.settings)
        try:
            while not self._stop.is_set() or self._due:
                now = time.monotonic()
                ready = []
                with self._lock:
                    while self._due and (self._due[0][0] <= now or self._stop.is_set()):
                        ready.append(heapq.heappop(self._due))
                for _, pid, label in ready:
                    record = LabelRecord(
                        system="textclf", prediction_id=pid, label=label, label_ts_ms=int(time.time() * 1000)
                    )
                    publish(producer, self.settings.labels_topic, record, key=pid)
                self.published += len(ready)
                if ready:
                    producer.flush(10.0)
                else:
                    time.sleep(0.05)
        finally:
            producer.flush(10.0)
            producer.close()


@dataclass
class RolloutRun:
    load: LoadResult
    status: dict[str, Any]
    started_s: float | None = None
    """Seconds into the load when the rollout was started."""
    first_challenger_s: float | None = None
    """... when the challenger first answered a request."""
    finished_s: float | None = None
    """... when the rollout reached its outcome."""
    arms: dict[str, int] = field(default_factory=dict)
    labels_published: int = 0
    """Feedback labels the simulated users published (the server's ``labels.joined`` says how many it read)."""

    @property
    def outcome(self) -> str | None:
        rollout = self.status.get("rollout") or {}
        return rollout.get("outcome")


def drive_rollout(
    url: str,
    settings: TextclfSettings,
    texts: list[str],
    labels: list[str],
    *,
    plan: dict[str, Any] | None,
    token: str,
    rate: float = 200.0,
    duration_s: float = 30.0,
    start_after_s: float = 3.0,
    feedback_delay_s: float = 1.0,
    wait_post_promotion: bool = False,
) -> RolloutRun:
    """Open-loop ``/predict`` load at ``rate`` for ``duration_s``; a rollout of ``plan`` starts after
    ``start_after_s``. Returns the load's result, the rollout's status when it reached its outcome (or was
    promoted, unless ``wait_post_promotion``) and when things happened. With ``plan`` None nothing is started
    and everything else runs as for a rollout (labels published, the status polled): the steady state that a
    rollout's latency is compared with, under the same client-side load."""
    t0 = time.monotonic()
    run = RolloutRun(load=LoadResult(rate, 0.0, 0.0, 0, 0), status={})
    arms: dict[str, int] = {}

    with FeedbackSimulator(settings, delay_s=feedback_delay_s) as feedback:

        def on_response(i: int, body: Any) -> None:
            arm = body["arm"]
            arms[arm] = arms.get(arm, 0) + 1
            if arm == "challenger" and run.first_challenger_s is None:
                run.first_challenger_s = time.monotonic() - t0
            feedback.answered(body["prediction_id"], labels[i % len(labels)])

        def body(i: int) -> dict[str, Any]:
            return {"text": texts[i % len(texts)], "key": f"user-{i % 5000}"}

        failed: list[BaseException] = []

        def controller() -> None:
            try:
                control()
            except BaseException as exc:  # re-raised below: a dead controller must not read as "no outcome"
                failed.append(exc)

        def control() -> None:
            with httpx.Client(base_url=url, timeout=10.0) as client:
                time.sleep(start_after_s)
                # an analysis on labels: start once the server's feedback consumer holds its partition
                needs_labels = plan is not None and plan.get("feedback", True)
                while needs_labels and not client.get("/rollout").json()["labels"]["consumer_assigned"]:
                    if time.monotonic() - t0 > start_after_s + 30.0:
                        raise RuntimeError("the server's feedback consumer has no partition after 30 s")
                    time.sleep(0.1)
                if plan is not None:
                    r = client.post("/admin/rollout", json=plan, headers={"Authorization": f"Bearer {token}"})
                    r.raise_for_status()
                    run.started_s = time.monotonic() - t0
                while time.monotonic() - t0 < duration_s + start_after_s:
                    status = client.get("/rollout").json()
                    rollout = status.get("rollout") or {}
                    if plan is not None and (
                        rollout.get("phase") == "done"
                        or (not wait_post_promotion and rollout.get("phase") == "post_promotion")
                    ):
                        run.finished_s = time.monotonic() - t0
                        run.status = status
                        break
                    time.sleep(0.2)
                run.status = run.status or client.get("/rollout").json()

        thread = threading.Thread(target=controller, name="rollout-controller", daemon=True)
        thread.start()

        run.load = run_async(
            http_load(
                url + "/predict",
                method="POST",
                rate=rate,
                duration_s=duration_s,
                json_body=body,
                warmup_s=0.0,
                on_response=on_response,
            )
        )
        thread.join(timeout=30)
        if failed:
            raise RuntimeError("the rollout controller failed") from failed[0]
    run.arms = arms
    run.labels_published = feedback.published
    return run
