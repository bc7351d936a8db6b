"""How good a churn score or a value prediction is: the measures the backtest and bench/ report."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


def expected_calibration_error(y_true: ArrayLike, probability: ArrayLike, bins: int = 10) -> float:
    """Mean gap between predicted and observed rates over equal-width probability bins, weighted by bin size."""
    y, p = np.asarray(y_true, dtype=float), np.asarray(probability, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            total += members.sum() * abs(y[members].mean() - p[members].mean())
    return total / len(y)


def calibration_bins(y_true: ArrayLike, probability: ArrayLike, bins: int = 10) -> list[tuple[float, float, int]]:
    """Per equal-width probability bin that holds anyone: (mean predicted, observed churn rate, customers), the points
    of a calibration plot; a calibrated model's points lie on the diagonal."""
    y, p = np.asarray(y_true, dtype=float), np.asarray(probability, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [(float(p[which == index].mean()), float(y[which == index].mean()), int((which == index).sum()))
            for index in range(bins) if (which == index).any()]


def lift_by_decile(y_true: ArrayLike, score: ArrayLike) -> list[float]:
    """The churn rate of each tenth of customers, riskiest tenth first, over everyone's churn rate."""
    y, s = np.asarray(y_true, dtype=float), np.asarray(score, dtype=float)
    ranked = y[np.argsort(-s, kind="stable")]
    return [float(part.mean() / y.mean()) for part in np.array_split(ranked, 10) if len(part)]


def churn_metrics(y_true: ArrayLike, score: ArrayLike, is_probability: bool = True) -> dict[str, float]:
    """ROC-AUC, PR-AUC, and, for probabilities, Brier score and calibration error; plus the top decile's precision
    and lift (how much likelier than average a customer flagged in the riskiest 10% is to churn)."""
    y, s = np.asarray(y_true, dtype=int), np.asarray(score, dtype=float)
    top = np.argsort(-s, kind="stable")[: max(1, len(s) // 10)]
    metrics = {
        "roc_auc": roc_auc_score(y, s),
        "pr_auc": average_precision_score(y, s),
        "brier": brier_score_loss(y, s) if is_probability else float("nan"),
        "ece": expected_calibration_error(y, s) if is_probability else float("nan"),
        "top10_precision": y[top].mean(),
        "top10_recall": y[top].sum() / max(1, y.sum()),
    }
    metrics["lift"] = metrics["top10_precision"] / y.mean()
    return metrics


def value_metrics(actual: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    actual_values, predicted_values = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    return {
        "spearman": float(spearmanr(actual_values, predicted_values).statistic),
        "mae": float(np.mean(np.abs(actual_values - predicted_values))),
    }
