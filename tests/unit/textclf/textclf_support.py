"""A second, tiny corpus for the textclf tests: other column names, another label rule, a time column.

200 seeded rows of product reviews in four topics (each topic has its own words, so batches by topic are a real
vocabulary shift), with known faults in the source: 10 rows of the excluded label ``meh``, 4 rows whose text
columns are both empty and 3 re-typed copies of earlier texts (other capitals and spacing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systems.mlops_textclf.ingest import CorpusSplit, write_split
from systems.mlops_textclf.settings import CorpusConfig, TextclfSettings

TOPICS = {
    "shoes": ["sole", "heel", "laces", "insole", "sneaker", "boot", "suede", "toe"],
    "phones": ["battery", "screen", "charger", "camera", "signal", "app", "pixel", "case"],
    "books": ["chapter", "author", "plot", "ending", "novel", "pages", "story", "prose"],
    "garden": ["hose", "soil", "seeds", "rake", "bloom", "weeds", "pots", "shears"],
}
GOOD = ["great", "love", "perfect", "excellent", "happy", "recommend"]
BAD = ["broken", "awful", "refund", "poor", "disappointed", "returned"]
FILLER = ["the", "a", "it", "was", "and", "very", "my", "this", "after", "week", "really", "so"]

N_ROWS, N_MEH, N_EMPTY, N_REPEATED = 200, 10, 4, 3

CONFIG = CorpusConfig(
    source="tiny-reviews",
    text_columns=["headline", "body"],
    label_column="verdict",
    label_map={"bad": ["down"], "good": ["up"]},
    slice_column="topic",
    order_column="ts",
    id_column="uid",
    batch_plan=[["shoes"], ["phones"], ["books", "*"]],
    behavioural_suite=False,  # the English clothing-review CheckList cases are not this corpus's task
)


def tiny_corpus(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    topics = rng.choice(list(TOPICS), size=N_ROWS)
    verdict = np.where(rng.random(N_ROWS) < 0.7, "up", "down").astype(object)
    verdict[rng.choice(N_ROWS, size=N_MEH, replace=False)] = "meh"
    bodies, headlines = [], []
    for topic, v in zip(topics, verdict, strict=True):
        mood = GOOD if v == "up" else BAD if v == "down" else GOOD[:2] + BAD[:2]
        words = [*rng.choice(TOPICS[topic], 4), *rng.choice(mood, 2), *rng.choice(FILLER, int(rng.integers(6, 16)))]
        bodies.append(" ".join(rng.permutation(words)))
        headlines.append(str(rng.choice(mood)).title() if rng.random() < 0.5 else "")
    frame = pd.DataFrame(
        {
            "uid": [f"r{i:04d}" for i in range(N_ROWS)],
            "ts": [f"2024-01-{1 + i // 10:02d}T{i % 10:02d}:00" for i in rng.permutation(N_ROWS)],
            "headline": headlines,
            "body": bodies,
            "verdict": verdict,
            "topic": topics,
        }
    )
    good = np.flatnonzero(frame["verdict"] != "meh")
    empty = good[:N_EMPTY]
    frame.loc[empty, ["headline", "body"]] = ["", ""]
    # re-typed copies of earlier rows (by time): other capitals and spacing, same normalised text
    order = frame.iloc[good[N_EMPTY:]].sort_values("ts").index
    for src, dst in zip(order[:N_REPEATED], order[-N_REPEATED:], strict=True):
        frame.loc[dst, ["headline", "body"]] = [frame.loc[src, "headline"].upper(), "  " + frame.loc[src, "body"]]
        frame.loc[dst, "verdict"] = frame.loc[src, "verdict"]
    return frame


def make_textclf_settings(data_dir: Path, **fields: Any) -> TextclfSettings:
    """Settings with a fresh data dir, the tiny corpus's config and a minimum batch size that suits it."""
    settings = TextclfSettings(**({"data_dir": data_dir, "corpus": CONFIG, "min_batch_rows": 10} | fields))
    settings.ensure_dirs()
    return settings


def ingest_all(split: CorpusSplit, settings: TextclfSettings) -> list[str]:
    """Write ``split`` (golden set + batches, no broken batch) and ingest every batch; the version ids, in order."""
    from systems.mlops_textclf.validate import admit_inbox

    write_split(split, settings)
    results = admit_inbox(settings)
    assert [r.outcome for r in results] == ["accepted"] * len(split.batches), [r.outcome for r in results]
    return [r.version_id or "" for r in results]
