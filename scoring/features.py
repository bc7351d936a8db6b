"""Per-customer purchase history as of a reference date, vectorised: the inputs of churn, CLV and segments.

Nothing after ``as_of`` is read: orders are cut at the reference date before anything is computed, and a test
proves that changing or adding later orders changes nothing.
"""

from __future__ import annotations

import pandas as pd

DAY = pd.Timedelta(days=1)

#: The columns an orders frame must have: who bought, when (tz-aware UTC), for how much.
ORDER_COLUMNS = ("customer", "at", "amount")


def purchase_days(orders: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Orders up to ``as_of`` (exclusive), merged to one purchase per customer per calendar day (UTC).

    Several orders on one day are one purchase of their summed amount, as the BG/NBD literature counts them.
    """
    _check_orders(orders)
    before = orders.loc[orders["at"] < as_of, list(ORDER_COLUMNS)]
    days = before.assign(day=before["at"].dt.floor("D"))
    return days.groupby(["customer", "day"], sort=True, as_index=False)["amount"].sum()


def rfm_summary(orders: pd.DataFrame, as_of: pd.Timestamp, unit: pd.Timedelta = DAY) -> pd.DataFrame:
    """One row per customer who bought before ``as_of``:

    - ``frequency``: repeat purchases (purchase days after the first)
    - ``recency``: time from the first to the last purchase, in ``unit``
    - ``age``: time from the first purchase to ``as_of``, in ``unit`` (the literature's T)
    - ``monetary``: mean value of the repeat purchases (0 when there are none)
    - ``first_value``: value of the first purchase; ``total``: everything spent
    - ``days_since_last``: time since the last purchase, in days
    - ``mean_gap_days``, ``gap_spread_days``: the customer's usual time between purchases and its spread
    - ``gap_ratio``: the current gap relative to the usual one (NaN with fewer than two purchases)
    - ``purchases_last_30d``, ``_90d``, ``_180d``: purchase days in those last days (trend)
    """
    days = purchase_days(orders, as_of)
    grouped = days.groupby("customer", sort=True)
    first = grouped["day"].min()
    last = grouped["day"].max()
    count = grouped["day"].size()
    total = grouped["amount"].sum()
    first_value = grouped["amount"].first()
    gaps = grouped["day"].diff().dt.total_seconds() / 86_400
    gap_stats = gaps.groupby(days["customer"]).agg(["mean", "std"])
    frequency = count - 1
    repeat_total = total - first_value
    summary = pd.DataFrame(
        {
            "frequency": frequency,
            "recency": (last - first) / unit,
            "age": (as_of.floor("D") - first) / unit,
            "monetary": (repeat_total / frequency.where(frequency > 0)).fillna(0.0),
            "first_value": first_value,
            "total": total,
            "days_since_last": (as_of.floor("D") - last) / DAY,
            "mean_gap_days": gap_stats["mean"],
            "gap_spread_days": gap_stats["std"],
        }
    )
    summary["gap_ratio"] = summary["days_since_last"] / summary["mean_gap_days"]
    # Recent activity, for trends: purchase days in the last 30, 90 and 180 days before as_of.
    days_before = (as_of.floor("D") - days["day"]) / DAY
    for window in (30, 90, 180):
        recent = days["customer"].where(days_before <= window)
        summary[f"purchases_last_{window}d"] = recent.value_counts().reindex(summary.index, fill_value=0)
    summary.index.name = "customer"
    return summary


def _check_orders(orders: pd.DataFrame) -> None:
    missing = [column for column in ORDER_COLUMNS if column not in orders.columns]
    if missing:
        raise ValueError(f"orders frame lacks {', '.join(missing)}")
    if getattr(orders["at"].dt, "tz", None) is None:
        raise ValueError("orders 'at' must be timezone-aware UTC")


#: Survey answers, one row per response: who answered, when (tz-aware UTC), the NPS given (NaN if the form had
#: none) and the sentiment of its free text from -1 to 1 (NaN if it had none).
RESPONSE_COLUMNS = ("customer", "at", "nps", "sentiment")
RECENT_ANSWER_DAYS = 180


def survey_summary(responses: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per customer who answered before ``as_of``: ``latest_nps``, ``nps_change`` (latest minus the one before,
    NaN with fewer than two) and ``recent_sentiment`` (mean over the last 180 days' answers with text)."""
    missing = [column for column in RESPONSE_COLUMNS if column not in responses.columns]
    if missing:
        raise ValueError(f"responses frame lacks {', '.join(missing)}")
    before = responses.loc[responses["at"] < as_of, list(RESPONSE_COLUMNS)].sort_values(["customer", "at"], kind="stable")
    scored = before.dropna(subset=["nps"]).assign(previous_nps=lambda frame: frame.groupby("customer")["nps"].shift(1))
    latest = scored.groupby("customer").tail(1).set_index("customer")
    recent = before[(as_of - before["at"]) <= pd.Timedelta(days=RECENT_ANSWER_DAYS)]
    summary = pd.DataFrame({
        "latest_nps": latest["nps"],
        "nps_change": latest["nps"] - latest["previous_nps"],
        "recent_sentiment": recent.groupby("customer")["sentiment"].mean(),
    })
    summary.index.name = "customer"
    return summary


#: Email engagement, one row per event: who (normalised email), when (tz-aware UTC), and what (an
#: EmailEventKind value: "open", "click", "bounce", "unsubscribe", "spam_complaint", "sent").
EVENT_COLUMNS = ("customer", "at", "event")
ENGAGEMENT_WINDOW_DAYS = 90


def engagement_summary(events: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per customer with an email event before ``as_of``:

    - ``days_since_open``, ``days_since_click``: days since the last open, click (NaN if never); ``last_open``
    - ``opens``: all opens so far; ``opens_last_90d``, ``opens_prev_90d`` (90 to 180 days ago), ``clicks_last_90d``
    - ``bounces``: bounced emails so far
    - ``unsubscribed_at``: the first unsubscribe or spam complaint (NaT if none); ``has_unsubscribed`` 0/1;
      ``days_since_unsubscribe``
    """
    missing = [column for column in EVENT_COLUMNS if column not in events.columns]
    if missing:
        raise ValueError(f"events frame lacks {', '.join(missing)}")
    before = events.loc[events["at"] < as_of, list(EVENT_COLUMNS)]
    day = before["at"].dt.floor("D")
    days_ago = (as_of.floor("D") - day) / DAY
    customer = before["customer"]
    is_open, is_click = before["event"] == "open", before["event"] == "click"
    leaving = before["event"].isin(["unsubscribe", "spam_complaint"])

    def count(mask: pd.Series) -> pd.Series:
        return mask.groupby(customer).sum()

    last_open = day.where(is_open).groupby(customer).max()
    summary = pd.DataFrame({
        "days_since_open": days_ago.where(is_open).groupby(customer).min(),
        "days_since_click": days_ago.where(is_click).groupby(customer).min(),
        "last_open": last_open,
        "opens": count(is_open),
        "opens_last_90d": count(is_open & (days_ago <= ENGAGEMENT_WINDOW_DAYS)),
        "opens_prev_90d": count(is_open & (days_ago > ENGAGEMENT_WINDOW_DAYS) & (days_ago <= 2 * ENGAGEMENT_WINDOW_DAYS)),
        "clicks_last_90d": count(is_click & (days_ago <= ENGAGEMENT_WINDOW_DAYS)),
        "bounces": count(before["event"] == "bounce"),
        "unsubscribed_at": day.where(leaving).groupby(customer).min(),
    })
    summary["has_unsubscribed"] = summary["unsubscribed_at"].notna().astype(int)
    summary["days_since_unsubscribe"] = (as_of.floor("D") - summary["unsubscribed_at"]) / DAY
    summary.index.name = "customer"
    return summary


def engagement_activity(events: pd.DataFrame | None, responses: pd.DataFrame | None) -> pd.DataFrame:
    """Opens, clicks and survey answers as an orders-shaped frame (amount 0): for a business with no orders,
    engagement is the activity whose absence counts as churn."""
    parts = []
    if events is not None:
        engaged = events[events["event"].isin(["open", "click"])]
        parts.append(engaged[["customer", "at"]])
    if responses is not None:
        parts.append(responses[["customer", "at"]])
    if not parts:
        return pd.DataFrame({"customer": pd.Series(dtype=object), "at": pd.Series(dtype="datetime64[ns, UTC]"), "amount": pd.Series(dtype=float)})
    return pd.concat(parts, ignore_index=True).assign(amount=0.0)
