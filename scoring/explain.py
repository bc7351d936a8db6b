"""Risk bands and the reasons behind a score, in words an owner uses.

Reasons describe the customer's own history against their own habits and against the customer base: they say
what the score rests on, not how the model weighs it, so they stay true whichever model is chosen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_REASONS = 3


def risk_bands(probability: pd.Series, summary: pd.DataFrame, horizon_days: int, medium: float, high: float) -> pd.Series:
    """low / medium / high by probability; ``new`` for one purchase made within the last half horizon, where any
    number would be a guess."""
    bands = pd.Series(np.select([probability >= high, probability >= medium], ["high", "medium"], "low"), index=probability.index)
    too_new = (summary["frequency"] == 0) & (summary["days_since_last"] < horizon_days / 2)
    return bands.where(~too_new.reindex(bands.index, fill_value=False), "new")


def reasons(summary: pd.DataFrame, horizon_days: int) -> pd.Series:
    """Up to three reasons per customer, most telling first, joined with '; '."""
    typical_spend = summary["total"].median()
    candidates = {
        # (applies, severity for ordering, text)
        "overdue": (
            (summary["frequency"] >= 2) & (summary["gap_ratio"] >= 1.5),  # a habit needs at least two gaps
            summary["gap_ratio"],
            "no order for " + _days(summary["days_since_last"]) + "; usually orders every " + _days(summary["mean_gap_days"]),
        ),
        "one_order": (
            summary["frequency"] == 0,
            summary["days_since_last"] / horizon_days,
            "only one order so far, " + _days(summary["days_since_last"]) + " ago",
        ),
        "quiet": (
            (summary["purchases_last_90d"] == 0) & (summary["frequency"] > 0) & (summary["days_since_last"] > 90),
            summary["days_since_last"] / 90,
            "no order in the last 90 days (" + (summary["frequency"] + 1).astype(int).astype(str) + " orders before that)",
        ),
        "slowing": (
            (summary["purchases_last_180d"] > 0) & (summary["purchases_last_90d"] * 2 < summary["purchases_last_180d"] - summary["purchases_last_90d"]),
            pd.Series(1.0, index=summary.index),
            "ordering less often lately: " + summary["purchases_last_90d"].astype(int).astype(str) + " orders in the last 90 days, "
            + (summary["purchases_last_180d"] - summary["purchases_last_90d"]).astype(int).astype(str) + " in the 90 before",
        ),
        "low_spend": (
            summary["total"] < typical_spend / 2,
            pd.Series(0.5, index=summary.index),
            "has spent " + summary["total"].map("{:,.2f}".format) + " in all, under half the typical customer's " + f"{typical_spend:,.2f}",
        ),
        "history": (  # only where nothing else applies: every customer gets at least one reason
            pd.Series(True, index=summary.index),
            pd.Series(0.0, index=summary.index),
            "last order " + _days(summary["days_since_last"]) + " ago, " + (summary["frequency"] + 1).astype(int).astype(str) + " orders in all",
        ),
        "regular": (
            (summary["frequency"] > 0) & (summary["gap_ratio"] < 1.0),
            pd.Series(0.1, index=summary.index),
            "ordering on their usual rhythm (last order " + _days(summary["days_since_last"]) + " ago)",
        ),
    }
    if "latest_nps" in summary:  # survey answers, when the business has them
        nps = summary["latest_nps"]
        candidates["nps_fell"] = (
            summary["nps_change"] <= -2,
            -summary["nps_change"] / 2,
            "NPS fell from " + (nps - summary["nps_change"]).map("{:.0f}".format) + " to " + nps.map("{:.0f}".format),
        )
        candidates["detractor"] = (
            (nps <= 6) & ~(summary["nps_change"] <= -2),
            (7 - nps) / 3,
            "gave an NPS of " + nps.map("{:.0f}".format) + " (would not recommend)",
        )
        candidates["negative_words"] = (
            summary["recent_sentiment"] <= -0.05,
            -summary["recent_sentiment"] * 2,
            pd.Series("recent survey answers read negative", index=summary.index),
        )
    applies = pd.DataFrame({name: spec[0].fillna(False) for name, spec in candidates.items()})
    applies["history"] = ~applies.drop(columns="history").any(axis=1)
    severity = pd.DataFrame({name: spec[1].where(applies[name]) for name, spec in candidates.items()})
    texts = pd.DataFrame({name: spec[2] for name, spec in candidates.items()})
    order = np.argsort(-severity.fillna(-np.inf).to_numpy(), axis=1, kind="stable")[:, :MAX_REASONS]
    chosen = np.take_along_axis(texts.to_numpy(dtype=object), order, axis=1)
    keep = np.take_along_axis(applies.to_numpy(), order, axis=1)
    joined = ["; ".join(text for text, ok in zip(row, oks) if ok) for row, oks in zip(chosen, keep)]
    return pd.Series(joined, index=summary.index, name="reasons")


def _days(values: pd.Series) -> pd.Series:
    rounded = values.fillna(0).round().astype(int)
    return rounded.astype(str) + np.where(rounded == 1, " day", " days")
