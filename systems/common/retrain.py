"""What every consumer of monitoring's ``retrain.requests`` shares: its consumer, and the at-most-once screen.

Fraud's retrain listener and the text classifier's pipeline differ in what a retrain *is*; they agree on how a
request reaches them and on when not to act on it:

- :func:`retrain_consumer`: the topic and its dead-letter topic exist (one partition: requests are rare), and
  the group member may spend up to an hour in the handler between two polls (a retrain runs there; the
  clients' 5-minute default would drop the member mid-retrain and re-deliver the request to another);
- :func:`screen_request`: a request for another system or model is ``ignored``; one this process already
  handled, or one a registered version carries the id of (``registry.versions_tagged``, the idempotency key
  across restarts and consumers), is a ``duplicate``. ``None``: act on it.
"""

from __future__ import annotations

from typing import Any, Literal

from systems.common import registry
from systems.common.broker import Consumer, Producer, TopicSpec, create_topics, dead_letter_topic
from systems.common.predictions import RetrainRequest
from systems.common.settings import MlsdSettings

RETRAIN_MAX_POLL_INTERVAL_MS = 60 * 60 * 1000
"""A retrain runs inside the handler, between two polls, and can take minutes: past the clients' 5-minute
default the member is dropped from its group."""


def retrain_consumer(settings: MlsdSettings, group_id: str) -> tuple[Consumer, Producer]:
    """A group consumer of ``retrain.requests`` (topics created) and a producer for its dead letters.

    Configures the registry first: the at-most-once screen reads it before anything registers, and a fresh
    process would otherwise ask MLflow's default (``./mlflow.db``), find no tag, and retrain again.
    """
    from systems.common.broker import make_consumer, make_producer

    registry.configure(settings)
    topic = settings.retrain_requests_topic
    create_topics(settings, [TopicSpec(topic, 1), TopicSpec(dead_letter_topic(topic), 1)])
    poll_override: dict[str, Any] = (
        {"max.poll.interval.ms": RETRAIN_MAX_POLL_INTERVAL_MS}
        if settings.kafka_client == "confluent"
        else {"max_poll_interval_ms": RETRAIN_MAX_POLL_INTERVAL_MS}
    )
    return make_consumer(settings, [topic], group_id, **poll_override), make_producer(settings)


def screen_request(
    request: RetrainRequest, *, system: str, model_name: str, done: set[str]
) -> tuple[Literal["ignored", "duplicate"], str | None, str] | None:
    """``(status, version, detail)`` when the request must not be acted on; None when it must.

    ``done`` holds the request ids this process has handled; a registry hit is added to it.
    """
    rid = request.request_id
    if request.system != system or request.model_name != model_name:
        return "ignored", None, f"for {request.system}/{request.model_name}"
    if rid in done:
        return "duplicate", None, "already handled by this listener"
    existing = registry.versions_tagged(model_name, registry.RETRAIN_REQUEST_TAG, rid)
    if existing:
        done.add(rid)
        return "duplicate", existing[-1], "a version carries its tag"
    return None
