"""The label of a sentiment score, without the model: connectors label scores without loading scikit-learn."""

from __future__ import annotations

POSITIVE_AT, NEGATIVE_AT = 0.05, -0.05  # VADER's own thresholds for its compound score


def sentiment_label(score: float) -> str:
    if score >= POSITIVE_AT:
        return "positive"
    if score <= NEGATIVE_AT:
        return "negative"
    return "neutral"
