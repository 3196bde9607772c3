"""The feedback loop: late labels -> label store -> retrain on matured labels -> gated promotion.

Run: ``mlsd fraud retrain`` (scheduled), ``mlsd fraud retrain --if-ap-below 0.5`` (only when the
champion's Average Precision on the most recent matured day has dropped below the floor), or
``mlsd fraud retrain --listen`` (when monitoring asks: ``retrain.requests``; also a thread of ``mlsd fraud up``).

- ``run_label_sink`` consumes ``labels`` in its own consumer group and writes them idempotently to the
  label store (a chargeback re-delivered is still one label).
- ``retrain`` joins matured labels to the *served* feature vectors kept in the decision store (so
  the model learns from exactly what production computed: no training/serving skew), trains a
  candidate on the older window, and evaluates candidate and champion on the same most-recent window.
  The candidate is registered either way; ``champion`` moves only if it wins on Average Precision.
  Running scorers notice the alias move within ``alias_poll_s`` and swap between two batches.
- ``run_retrain_listener`` closes the monitoring loop: it consumes monitoring's ``RetrainRequest`` messages
  and runs ``retrain`` at most once per ``request_id``, recorded as tags on the version it registers
  (``registry.RETRAIN_REQUEST_TAG``), which is also how monitoring learns what its request produced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from systems.common.broker import (
    Consumer,
    Record,
    make_consumer,
    make_producer,
    run_consumer_loop,
)
from systems.common.errors import MlsdError
from systems.common.predictions import RetrainRequest
from systems.common.retrain import retrain_consumer, screen_request
from systems.fraud.evaluate import evaluate_scores
from systems.fraud.features import FEATURES, SECONDS_PER_DAY
from systems.fraud.schemas import Chargeback
from systems.fraud.settings import FraudSettings
from systems.fraud.store import LabelStore, features_matrix
from systems.fraud.stream import decision_store_url, label_store_url, load_champion
from systems.fraud.train import Split, SplitConfig, register_model, train_one

log = logging.getLogger(__name__)

SYSTEM = "fraud"
"""This system's name in prediction records and in the ``RetrainRequest`` messages meant for it."""


def run_label_sink(settings: FraudSettings, stop: threading.Event, *, group_id: str | None = None) -> int:
    """Consume labels into the label store until ``stop``; returns labels newly stored.

    Through the common consumer loop: the store write comes before the offset commit (at-least-once; the
    store ignores a re-delivered label), and a malformed label goes to ``labels.dlq`` with its reason.
    """
    store = LabelStore(label_store_url(settings))
    consumer: Consumer = make_consumer(
        settings, [settings.labels_topic], group_id or f"{settings.group_id}-label-store"
    )
    producer = make_producer(settings)
    stored = 0

    def handle(batch: list[tuple[Record, Chargeback]]) -> None:
        nonlocal stored
        rows = [(c.tx_id, c.customer_id, c.terminal_id, c.ts_s, c.fraud, c.label_ts_s) for _, c in batch]
        stored += store.put_many(rows)

    try:
        run_consumer_loop(consumer, producer, Chargeback, handle, stop=stop, max_records=5000)
    finally:
        consumer.close()
        producer.close()
        store.close()
    return stored


def matured_frame(settings: FraudSettings, *, as_of_s: int | None = None) -> pd.DataFrame:
    """Served decisions with matured labels: tx columns + FEATURES + fraud + the served score."""
    labels = LabelStore(label_store_url(settings))
    try:
        as_of = as_of_s if as_of_s is not None else 2**62
        df = labels.matured_with_decisions(decision_store_url(settings), as_of_s=as_of)
    finally:
        labels.close()
    if df.empty:
        return df
    X = features_matrix(df["features"].tolist(), len(FEATURES))
    out = df.drop(columns=["features"]).reset_index(drop=True)
    out = pd.concat([out, pd.DataFrame(X, columns=FEATURES).drop(columns=["amount"])], axis=1)
    out["day"] = out["ts_s"] // SECONDS_PER_DAY
    return out


class RetrainNotReady(MlsdError):
    """Not enough matured labels after the change point yet: retry once more labels have matured."""


@dataclass
class RetrainResult:
    candidate_version: str
    champion_version: str | None
    candidate_ap: float
    champion_ap: float | None
    promoted: bool
    train_rows: int
    eval_rows: int
    eval_days: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def recent_ap(settings: FraudSettings, *, days: int = 1) -> float | None:
    """Average Precision of the *served* scores over the last ``days`` of matured labels."""
    df = matured_frame(settings)
    if df.empty:
        return None
    recent = df[df["day"] > df["day"].max() - days]
    if recent["fraud"].nunique() < 2:
        return None
    return evaluate_scores(recent, recent["score"].to_numpy()).ap


def retrain(
    settings: FraudSettings,
    *,
    kind: str = "xgboost",
    strategy: str = "none",
    train_days: int = 7,
    calib_days: int = 2,
    eval_days: int = 2,
    fit_params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    since_s: int | None = None,
) -> RetrainResult:
    """Train a candidate on matured labels and promote it only if it beats the champion (same window).

    The windows are whole days: the last matured day is left out while it holds under half the rows of a
    typical day (its labels are still arriving). ``since_s`` (the change point a monitoring incident names)
    makes every window start on or after that day: a model that answers a drift must learn the world after
    it, and with labels a week late that world is not in the label store yet right after the alert —
    :class:`RetrainNotReady` says so, and the listener waits for it.

    ``tags`` are written on the candidate's model version by the call that creates it (see
    ``registry.log_and_register``): a crash right after registration cannot leave an untagged version behind.
    Raises :class:`MlsdError` when there is nothing to train on yet (no matured labels, a single-class window).
    """
    from systems.common import registry

    df = matured_frame(settings)
    if df.empty:
        message = "no matured labels joined to decisions yet: let the scorers and label sink run"
        raise RetrainNotReady(message) if since_s is not None else MlsdError(message)
    per_day = df["day"].value_counts()
    last = int(df["day"].max())
    if len(per_day) > 1 and per_day[last] < 0.5 * per_day.median():
        last -= 1
        df = df[df["day"] <= last]
    eval_lo = last - eval_days + 1
    train_lo = eval_lo - train_days
    if since_s is not None and train_lo < since_s // SECONDS_PER_DAY:
        first = since_s // SECONDS_PER_DAY
        raise RetrainNotReady(
            f"matured labels reach day {last}; learning after the change (day {first}) needs days "
            f"{first}..{first + train_days + eval_days - 1}"
        )
    train = df[(df["day"] >= train_lo) & (df["day"] < eval_lo)]
    test = df[df["day"] >= eval_lo]
    split = Split(
        fit=train[train["day"] < eval_lo - calib_days],
        calib=train[train["day"] >= eval_lo - calib_days],
        test=test,
        config=SplitConfig(
            start_day=train_lo, train_days=train_days, delay_days=0, test_days=eval_days, calib_days=calib_days
        ),
    )
    for name, part in (("fit", split.fit), ("calib", split.calib), ("eval", split.test)):
        if part["fraud"].nunique() < 2:
            raise MlsdError(f"the {name} window has a single class; wait for more matured labels")
    candidate, metrics = train_one(split, kind, strategy, fit_params=fit_params)
    version = register_model(
        settings,
        candidate,
        params={"kind": kind, "strategy": strategy, "source": "retrain", "eval_days": f"{eval_lo}..{last}"},
        metrics=metrics,
        version_tags=tags,
    )
    registry.set_alias(settings.model_name, registry.CHALLENGER, version)
    # both models scored by the same code on the same rows (unrounded), so "better" means better
    X = test[FEATURES].to_numpy(np.float64)
    candidate_ap = evaluate_scores(test, candidate.raw_scores(X)).ap
    champion = load_champion(settings)
    champion_ap = None if champion is None else evaluate_scores(test, champion.raw_scores(X)).ap
    promoted = registry.promote_if_better(
        settings.model_name, version, metric="ap", candidate_value=candidate_ap, champion_value=champion_ap
    )
    return RetrainResult(
        candidate_version=version,
        champion_version=None if champion is None else champion.version,
        candidate_ap=candidate_ap,
        champion_ap=champion_ap,
        promoted=promoted,
        train_rows=len(train),
        eval_rows=len(test),
        eval_days=(eval_lo, last),
    )


# ------------------------------------------------------------------------------------ retrain requests

RetrainStatus = Literal["retrained", "duplicate", "ignored", "failed", "deferred"]


@dataclass(frozen=True)
class RetrainOutcome:
    """What the listener did with one request.

    ``status``: ``retrained`` (a new version, tagged with the request), ``duplicate`` (a version already
    carries this request id; ``version`` is it), ``ignored`` (another system's or model's request),
    ``failed`` (no retrain possible now, e.g. no matured labels; nothing tagged, so a re-request can succeed),
    ``deferred`` (the request names a change point and too few labels after it have matured: kept, retried).
    """

    request_id: str
    incident_id: str
    status: RetrainStatus
    version: str | None = None
    promoted: bool | None = None
    detail: str = ""


def run_retrain_listener(
    settings: FraudSettings,
    stop: threading.Event,
    *,
    group_id: str | None = None,
    on_ready: Callable[[], None] | None = None,
    on_outcome: Callable[[RetrainOutcome], None] | None = None,
    retrain_kwargs: dict[str, Any] | None = None,
    retry_s: float = 2.0,
) -> list[RetrainOutcome]:
    """Act on monitoring's retrain requests until ``stop``; returns one outcome per request read.

    Through the common consumer loop, so a malformed request goes to ``<topic>.dlq`` with its reason and the
    offset is committed after the batch was handled (at-least-once). The guarantees on top of that:

    - Only requests with ``system == "fraud"`` and ``model_name == settings.model_name`` are acted on; the
      topic is shared by every system, so the rest are counted (``ignored``) and committed, not dead-lettered.
    - At most one retrain per ``request_id``, across restarts and consumers: before training, the registry is
      asked for a version tagged with the request id (``registry.versions_tagged``); the retrain writes that
      tag (and the incident id) on the version it registers, atomically with the registration. A re-delivery
      (a crash before the commit, a rebalance) or a second publication finds the tag and is a ``duplicate``.
      An in-process set answers repeats within this process without a registry query.
    - A request that cannot be served now (``MlsdError`` from ``retrain``: no matured labels, a single-class
      window) is logged as ``failed`` and its offset **is committed**. An offset is a watermark, not a
      per-message ack: not committing it would be undone by the next request's commit, and the only way to
      retry it would be to stop reading the topic until labels mature, holding back every request behind
      it. Nothing is tagged, so monitoring (``versions_tagged`` → []) sees the request as not acted on, and a
      re-request, even with the same id, is retrained.
    - Anything else (registry unreachable, a bug) propagates and stops the listener without committing:
      the request is re-delivered on restart, and the tag check makes that safe.

    - A request whose evidence names the change point (``change_ts_ms``: where monitoring saw the cause begin)
      is retrained on data after it only (``retrain(since_s=...)``). Labels come a week late, so right after
      the alert there is none: the request is ``deferred`` — kept in ``<fraud dir>/retrain_deferred.json``
      (a restart keeps it) and retried every ``retry_s`` (the loop's ``tick``, so also while the topic is
      idle), in arrival order.

    Known gap: a crash after registration but before the gate leaves the candidate registered (and tagged)
    without a promotion decision; the request then counts as done. ``mlsd.retrain_promoted`` is written after
    the gate, so such a version has no promoted tag.
    ``retrain_kwargs`` go to :func:`retrain` (``kind``, ``train_days``, ``fit_params``, ...).
    """
    from systems.common import registry

    # registry configured, topics created, a long poll interval (common.retrain); small batches so a commit
    # follows each retrain soon
    consumer, producer = retrain_consumer(settings, group_id or f"{settings.group_id}-retrain-listener")
    kwargs = dict(retrain_kwargs or {})
    done: set[str] = set()  # request ids known to have a tagged version (this process)
    outcomes: list[RetrainOutcome] = []
    deferred_path = settings.run_dir("fraud") / "retrain_deferred.json"
    deferred: dict[str, RetrainRequest] = {}
    if deferred_path.is_file():
        for raw in orjson.loads(deferred_path.read_bytes()):
            deferred[raw["request_id"]] = RetrainRequest.model_validate(raw)
    last_retry = [0.0]

    def save_deferred() -> None:
        deferred_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = deferred_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps([r.model_dump() for r in deferred.values()]))
        tmp.replace(deferred_path)  # atomic: a crash leaves the old list or the new one

    def act(request: RetrainRequest) -> RetrainOutcome:
        rid, iid = request.request_id, request.incident_id
        screened = screen_request(request, system=SYSTEM, model_name=settings.model_name, done=done)
        if screened is not None:
            status, version, why = screened
            return RetrainOutcome(rid, iid, status, version=version, detail=why)
        tags = {registry.RETRAIN_REQUEST_TAG: rid, registry.RETRAIN_INCIDENT_TAG: iid}
        change = request.evidence.get("change_ts_ms")
        since_s = int(change) // 1000 if isinstance(change, int | float) and not isinstance(change, bool) else None
        try:
            result = retrain(settings, tags=tags, since_s=since_s, **kwargs)
        except RetrainNotReady as exc:
            return RetrainOutcome(rid, iid, "deferred", detail=str(exc))
        except MlsdError as exc:
            return RetrainOutcome(rid, iid, "failed", detail=str(exc))
        done.add(rid)
        promoted = "true" if result.promoted else "false"
        registry.set_version_tags(
            settings.model_name, result.candidate_version, {registry.RETRAIN_PROMOTED_TAG: promoted}
        )
        detail = f"candidate AP {result.candidate_ap:.4f} vs champion {result.champion_ap}"
        return RetrainOutcome(rid, iid, "retrained", result.candidate_version, result.promoted, detail)

    def report(outcome: RetrainOutcome) -> None:
        level = logging.WARNING if outcome.status == "failed" else logging.INFO
        log.log(level, "retrain request %s: %s %s", outcome.request_id, outcome.status, outcome.detail)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def settle(request: RetrainRequest) -> None:
        outcome = act(request)
        if outcome.status == "deferred":
            if request.request_id not in deferred:
                deferred[request.request_id] = request
                save_deferred()
                report(outcome)  # reported once when deferred, not on every retry
            return
        if deferred.pop(request.request_id, None) is not None:
            save_deferred()
        report(outcome)

    def handle(batch: list[tuple[Record, RetrainRequest]]) -> None:
        for _, request in batch:
            settle(request)

    def retry_deferred() -> None:
        if not deferred or time.monotonic() - last_retry[0] < retry_s:
            return
        last_retry[0] = time.monotonic()
        for request in list(deferred.values()):
            settle(request)

    try:
        run_consumer_loop(
            consumer,
            producer,
            RetrainRequest,
            handle,
            stop=stop,
            max_records=10,
            on_ready=on_ready,
            tick=retry_deferred,
        )
    finally:
        consumer.close()
        producer.close()
    return outcomes
