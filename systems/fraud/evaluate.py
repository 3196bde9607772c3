"""Fraud metrics as the handbook defines them, plus alert-budget and threshold helpers.

Accuracy is useless at 0.8 % fraud (predicting "genuine" always is 99.2 % accurate). The handbook
reports three numbers, and so do we:

- AUC-ROC: threshold-free ranking quality, but dominated by the huge negative class (a model can have
  0.87 AUC and still bury investigators in false alerts).
- Average Precision: area under the precision-recall curve; its baseline is the fraud rate, so it
  moves with what investigators feel.
- Card Precision@k: each day, rank *cards* by their highest transaction score, give the top k
  (k = 100, the investigators' daily capacity) to investigators; CP@k is the share of those cards
  that really had a fraud that day, averaged over days. This is the operational metric: one alert
  per card, a fixed daily budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score


def card_precision_at_k(
    day: np.ndarray, customer_id: np.ndarray, fraud: np.ndarray, score: np.ndarray, k: int = 100
) -> float:
    """Mean over days of the fraction of true-fraud cards among the k highest-scoring cards."""
    df = pd.DataFrame({"day": day, "c": customer_id, "y": fraud, "s": score})
    per_card = df.groupby(["day", "c"], sort=False).agg(y=("y", "max"), s=("s", "max")).reset_index()
    per_card = per_card.sort_values(["day", "s"], ascending=[True, False], kind="stable")
    top = per_card.groupby("day", sort=True).head(k)
    # divide by k, not by the cards available: the handbook's definition (a quiet day scores less)
    per_day = top.groupby("day")["y"].sum() / k
    return float(per_day.mean())


def precision_recall_at_budget(y: np.ndarray, score: np.ndarray, budget: int) -> tuple[float, float]:
    """Precision and recall when the ``budget`` highest scores are alerted (transaction level)."""
    order = np.argsort(-score, kind="stable")[:budget]
    tp = float(np.sum(y[order]))
    return tp / max(len(order), 1), tp / max(float(np.sum(y)), 1.0)


def threshold_for_fpr(y: np.ndarray, score: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold whose false-positive rate on (y, score) is at most ``target_fpr``."""
    neg = np.sort(score[y == 0])[::-1]
    if len(neg) == 0:
        return 0.5
    k = int(np.floor(target_fpr * len(neg)))  # negatives allowed above the threshold
    if k >= len(neg):
        return float(neg[-1])
    # scores strictly above neg[k] are alerts; nudging up keeps ties on the safe side
    return float(np.nextafter(neg[k], np.inf))


@dataclass
class Metrics:
    auc: float
    ap: float
    cp_at_100: float
    precision_at_budget: float
    recall_at_budget: float
    n: int
    frauds: int

    def as_dict(self) -> dict[str, float]:
        return {
            "auc": round(self.auc, 4),
            "ap": round(self.ap, 4),
            "cp@100": round(self.cp_at_100, 4),
            "precision@budget": round(self.precision_at_budget, 4),
            "recall@budget": round(self.recall_at_budget, 4),
            "n": self.n,
            "frauds": self.frauds,
        }


def evaluate_scores(test: pd.DataFrame, score: np.ndarray, *, k: int = 100) -> Metrics:
    """Handbook metrics for ``score`` on ``test`` (needs day, customer_id, fraud columns).

    The alert budget for precision/recall is k alerts per test day at transaction level.
    """
    y = test["fraud"].to_numpy()
    n_days = int(test["day"].nunique())
    p, r = precision_recall_at_budget(y, score, k * n_days)
    return Metrics(
        auc=float(roc_auc_score(y, score)),
        ap=float(average_precision_score(y, score)),
        cp_at_100=card_precision_at_k(test["day"].to_numpy(), test["customer_id"].to_numpy(), y, score, k),
        precision_at_budget=p,
        recall_at_budget=r,
        n=len(y),
        frauds=int(y.sum()),
    )
