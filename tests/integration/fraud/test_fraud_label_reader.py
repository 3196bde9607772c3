"""The scorer's label reader dies and is started again (as its supervisor does): terminal counts are sums, so every
label must be taken in exactly once. The reader resumes after the last label the state took in; a reader that
started from the beginning again -- what a restarted reader used to do -- would count every earlier label twice,
and the assertions below would see it."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from systems.common.broker import create_topics, make_producer
from systems.fraud.features import OnlineFeatures
from systems.fraud.schemas import chargeback_json
from systems.fraud.stream import Scorer, fraud_topics, run_label_follower

pytestmark = pytest.mark.integration

DAY = 86_400


class Boom(RuntimeError):
    pass


def _send_labels(settings, producer, first: int, n: int, day_s: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(first, first + n):
        ts = day_s + i % 3600
        body = chargeback_json(i, i % 50, i % 40, ts, int(i % 7 == 0), ts + 7 * DAY)
        producer.send(settings.labels_topic, body, key=str(i).encode())
    producer.flush()


def _follow(settings, scorer, producer) -> None:  # type: ignore[no-untyped-def]
    """One life of the label reader: until it has read the topic to its end (or the state raises)."""
    stop, caught_up = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_label_follower(settings, scorer, stop, producer, caught_up=caught_up)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    while t.is_alive() and not caught_up.wait(0.05):
        pass
    stop.set()
    t.join(30)
    if errors:
        raise errors[0]


def test_a_restarted_label_reader_takes_each_label_in_once(fraud_world, broker, kit) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(fraud_world, broker)
    create_topics(settings, fraud_topics(settings))
    producer = make_producer(settings)
    day_s = fraud_world.replay_start_s
    state = OnlineFeatures()
    scorer = Scorer(settings, model=None, state=state, store=None, producer=producer)  # type: ignore[arg-type]

    def counted() -> tuple[float, float]:
        return float(np.sum(state._t_cnt)), float(np.sum(state._t_fr))

    _send_labels(settings, producer, 0, 600, day_s)
    expected = (600.0, float(sum(i % 7 == 0 for i in range(600))))

    # the first life dies in the middle of a batch, after 250 labels were taken in
    apply = state.observe_label
    calls = {"n": 0}

    def dies_once(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 251:
            raise Boom("the state raised while taking in a label")
        apply(*args)

    state.observe_label = dies_once  # type: ignore[method-assign]
    with pytest.raises(Boom):
        _follow(settings, scorer, producer)
    assert counted()[0] == 250
    state.observe_label = apply  # type: ignore[method-assign]

    _follow(settings, scorer, producer)  # restarted: the other 350, not all 600 again
    assert counted() == expected

    _follow(settings, scorer, producer)  # restarted with nothing new: nothing changes
    assert counted() == expected

    _send_labels(settings, producer, 600, 200, day_s)  # and new labels after a restart are taken in
    _follow(settings, scorer, producer)
    assert counted()[0] == 800.0
    producer.close()
