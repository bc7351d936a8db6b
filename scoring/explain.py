"""Risk bands and the reasons behind a score, in words an owner uses.

Reasons describe the customer's own history against their own habits and against the customer base: they say
what the score rests on, not how the model weighs it, so they stay true whichever model is chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

MAX_REASONS = 3
NO_ORDERS_NOTE = "no orders recorded: scored from email and survey engagement alone"


def risk_bands(probability: pd.Series, summary: pd.DataFrame, horizon_days: int, medium: float, high: float) -> pd.Series:
    """low / medium / high by probability; ``new`` for one purchase made within the last half horizon, where any
    number would be a guess."""
    bands = pd.Series(np.select([probability >= high, probability >= medium], ["high", "medium"], "low"), index=probability.index)
    too_new = (summary["frequency"] == 0) & (summary["days_since_last"] < horizon_days / 2)
    return bands.where(~too_new.reindex(bands.index, fill_value=False), "new")


def reasons(summary: pd.DataFrame, horizon_days: int, activity: str = "orders") -> pd.Series:
    """Up to three reasons per customer, most telling first, joined with '; '.

    ``summary``: scoring.features.rfm_summary of the activity (orders, or for a business without orders, opens,
    clicks and survey answers), joined with the survey and engagement summaries where the model used them."""
    candidates = _order_reasons(summary, horizon_days) if activity == "orders" else _engagement_reasons(summary, horizon_days)
    if "latest_nps" in summary:  # survey answers, when the business has them
        candidates.update(_survey_reasons(summary))
    if "days_since_open" in summary:  # email events, when the business has them
        candidates.update(_email_reasons(summary))
    applies = pd.DataFrame({name: spec[0].fillna(False).astype(bool) for name, spec in candidates.items()})
    applies["history"] = ~applies.drop(columns="history").any(axis=1)
    severity = pd.DataFrame({name: spec[1].where(applies[name]) for name, spec in candidates.items()})
    order = np.argsort(-severity.fillna(-np.inf).to_numpy(), axis=1, kind="stable")[:, :MAX_REASONS]
    keep = np.take_along_axis(applies.to_numpy(), order, axis=1)
    # Each reason is worded only for the customers it is shown to: wording every candidate for everyone made
    # seven columns of strings per customer, the scoring stage's largest temporary.
    chosen = np.full(order.shape, "", dtype=object)
    for position, (name, spec) in enumerate(candidates.items()):
        shown = (order == position) & keep  # at most one cell per row, since a row of ``order`` is a permutation
        is_shown = shown.any(axis=1)
        if is_shown.any():
            chosen[shown] = spec[2](summary[is_shown]).to_numpy(dtype=object)
    joined = ["; ".join(text for text, ok in zip(row, oks) if ok) for row, oks in zip(chosen, keep)]
    if activity != "orders":  # every score says what it rests on
        joined = [f"{text}; {NO_ORDERS_NOTE}" for text in joined]
    return pd.Series(joined, index=summary.index, name="reasons")


# name -> (applies, severity for ordering, the text for the rows given)
Candidates = dict[str, tuple[pd.Series, pd.Series, Callable[[pd.DataFrame], pd.Series]]]


def _order_reasons(summary: pd.DataFrame, horizon_days: int) -> Candidates:
    typical_spend = summary["total"].median()
    return {
        "overdue": (
            (summary["frequency"] >= 2) & (summary["gap_ratio"] >= 1.5),  # a habit needs at least two gaps
            summary["gap_ratio"],
            lambda rows: "no order for " + _days(rows["days_since_last"]) + "; usually orders every " + _days(rows["mean_gap_days"]),
        ),
        "one_order": (
            summary["frequency"] == 0,
            summary["days_since_last"] / horizon_days,
            lambda rows: "only one order so far, " + _days(rows["days_since_last"]) + " ago",
        ),
        "quiet": (
            (summary["purchases_last_90d"] == 0) & (summary["frequency"] > 0) & (summary["days_since_last"] > 90),
            summary["days_since_last"] / 90,
            lambda rows: "no order in the last 90 days (" + (rows["frequency"] + 1).astype(int).astype(str) + " orders before that)",
        ),
        "slowing": (
            (summary["purchases_last_180d"] > 0) & (summary["purchases_last_90d"] * 2 < summary["purchases_last_180d"] - summary["purchases_last_90d"]),
            _constant(summary, 1.0),
            lambda rows: ("ordering less often lately: " + rows["purchases_last_90d"].astype(int).astype(str) + " orders in the last 90 days, "
            + (rows["purchases_last_180d"] - rows["purchases_last_90d"]).astype(int).astype(str) + " in the 90 before"),
        ),
        "low_spend": (
            summary["total"] < typical_spend / 2,
            _constant(summary, 0.5),
            lambda rows: "has spent " + rows["total"].map("{:,.2f}".format) + " in all, under half the typical customer's " + f"{typical_spend:,.2f}",
        ),
        "history": (  # only where nothing else applies: every customer gets at least one reason
            _constant(summary, True),
            _constant(summary, 0.0),
            lambda rows: "last order " + _days(rows["days_since_last"]) + " ago, " + (rows["frequency"] + 1).astype(int).astype(str) + " orders in all",
        ),
        "regular": (
            (summary["frequency"] > 0) & (summary["gap_ratio"] < 1.0),
            _constant(summary, 0.1),
            lambda rows: "ordering on their usual rhythm (last order " + _days(rows["days_since_last"]) + " ago)",
        ),
    }


def _engagement_reasons(summary: pd.DataFrame, horizon_days: int) -> Candidates:
    """For a business without orders: the same habits, in opens, clicks and survey answers."""
    return {
        "overdue": (
            (summary["frequency"] >= 2) & (summary["gap_ratio"] >= 1.5),
            summary["gap_ratio"],
            lambda rows: "no email open, click or survey answer for " + _days(rows["days_since_last"]) + "; usually one every " + _days(rows["mean_gap_days"]),
        ),
        "once": (
            summary["frequency"] == 0,
            summary["days_since_last"] / horizon_days,
            lambda rows: "opened, clicked or answered only once so far, " + _days(rows["days_since_last"]) + " ago",
        ),
        "history": (
            _constant(summary, True),
            _constant(summary, 0.0),
            lambda rows: "last opened, clicked or answered " + _days(rows["days_since_last"]) + " ago; active on " + (rows["frequency"] + 1).astype(int).astype(str) + " days in all",
        ),
        "regular": (
            (summary["frequency"] > 0) & (summary["gap_ratio"] < 1.0),
            _constant(summary, 0.1),
            lambda rows: "engaging on their usual rhythm (last time " + _days(rows["days_since_last"]) + " ago)",
        ),
    }


def _survey_reasons(summary: pd.DataFrame) -> Candidates:
    nps = summary["latest_nps"]
    return {
        "nps_fell": (
            summary["nps_change"] <= -2,
            -summary["nps_change"] / 2,
            lambda rows: "NPS fell from " + (rows["latest_nps"] - rows["nps_change"]).map("{:.0f}".format) + " to " + rows["latest_nps"].map("{:.0f}".format),
        ),
        "detractor": (
            (nps <= 6) & ~(summary["nps_change"] <= -2),
            (7 - nps) / 3,
            lambda rows: "gave an NPS of " + rows["latest_nps"].map("{:.0f}".format) + " (would not recommend)",
        ),
        "negative_words": (
            summary["recent_sentiment"] <= -0.05,
            -summary["recent_sentiment"] * 2,
            lambda rows: _constant(rows, "recent survey answers read negative"),
        ),
    }


STOPPED_OPENING_DAYS = 60  # no open for this long, by someone who opened at least twice, while others still open


def _email_reasons(summary: pd.DataFrame) -> Candidates:
    # Only while the business is still mailing: when no one has opened anything lately, no one "stopped".
    is_mailing = summary["days_since_open"].min() <= 30
    opens_before = summary["opens_prev_90d"]
    return {
        "unsubscribed": (  # said outright, so it leads while it is under a year old
            summary["has_unsubscribed"] == 1,
            pd.Series(np.where(summary["days_since_unsubscribe"] <= 365, 100.0, 1.5), index=summary.index),
            lambda rows: "unsubscribed from emails on " + _date(rows["unsubscribed_at"]),
        ),
        "stopped_opening": (
            (summary["opens"] >= 2) & (summary["days_since_open"] >= STOPPED_OPENING_DAYS) & is_mailing
            & (summary["has_unsubscribed"] == 0),
            summary["days_since_open"] / 90,
            lambda rows: "stopped opening emails in " + rows["last_open"].dt.strftime("%B %Y"),
        ),
        "opening_less": (
            (opens_before >= 2) & (summary["opens_last_90d"] * 2 < opens_before) & (summary["days_since_open"] < STOPPED_OPENING_DAYS),
            _constant(summary, 0.8),
            lambda rows: ("opening fewer emails: " + rows["opens_last_90d"].fillna(0).astype(int).astype(str) + " in the last 90 days, "
            + rows["opens_prev_90d"].fillna(0).astype(int).astype(str) + " in the 90 before"),
        ),
        "bouncing": (
            summary["bounces"] >= 1,
            _constant(summary, 1.2),
            lambda rows: "emails to them bounced (" + rows["bounces"].fillna(0).astype(int).astype(str) + "x): the address may no longer work",
        ),
    }


def _constant(summary: pd.DataFrame, value: object) -> pd.Series:
    return pd.Series(value, index=summary.index)


def _date(values: pd.Series) -> pd.Series:
    known = values.dropna()
    text = known.dt.day.astype(str) + known.dt.strftime(" %B %Y")
    return text.reindex(values.index, fill_value="")


def _days(values: pd.Series) -> pd.Series:
    rounded = values.fillna(0).round().astype(int)
    return rounded.astype(str) + np.where(rounded == 1, " day", " days")
