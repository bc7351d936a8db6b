"""The canonical records: the contract every connector maps into."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from connectors.base import InvalidRecord
from connectors.records import Answer, Contact, EmailAddress, Order, Score, SurveyResponse, from_payload, to_payload

UTC = timezone.utc


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  alice@example.com\t", "alice@example.com"),
        ("kunde@Bücher.de", "kunde@xn--bcher-kva.de"),  # IDN domain to ASCII
        ("Ünïcode@example.com", "ünïcode@example.com"),
    ],
)
def test_emails_are_normalised_for_matching_and_keep_what_was_typed(typed: str, normalised: str) -> None:
    email = EmailAddress.parse(typed)
    assert email.normalised == normalised
    assert email.typed == typed


@pytest.mark.parametrize("typed", ["a@b", "x@@y.com", "no-at-sign", "", "zero\u200bwidth@example.com", "a b@example.com"])
def test_invalid_emails_are_rejected_naming_the_field(typed: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        EmailAddress.parse(typed, "customer_email")
    assert caught.value.field_name == "customer_email"


def test_naive_times_are_rejected_never_guessed() -> None:
    with pytest.raises(InvalidRecord, match="created_at .* has no time zone"):
        Contact(source="csv", source_id="1", created_at=datetime(2024, 3, 5, 10, 0))


def test_aware_times_are_stored_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    contact = Contact(source="csv", source_id="1", created_at=datetime(2024, 3, 5, 11, 0, tzinfo=berlin))
    assert contact.created_at == datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
    assert contact.created_at.tzinfo is UTC


def test_orders_hold_decimal_amounts_and_iso_currencies() -> None:
    order = Order(source="shop", source_id="1", amount="0.10", currency="usd", status="refunded",
                  created_at=datetime(2024, 1, 1, tzinfo=UTC), customer_source_id="c1")
    assert order.amount == Decimal("0.10") and order.currency == "USD" and order.status.value == "refunded"
    with pytest.raises(InvalidRecord, match="currency .* three-letter ISO 4217"):
        Order(source="shop", source_id="1", amount="1", currency="dollars", status="won",
              created_at=datetime(2024, 1, 1, tzinfo=UTC), customer_source_id="c1")
    with pytest.raises(InvalidRecord, match="status .* must be one of won, lost, open, refunded"):
        Order(source="shop", source_id="1", amount="1", currency="USD", status="shipped",
              created_at=datetime(2024, 1, 1, tzinfo=UTC), customer_source_id="c1")


def test_every_record_carries_its_source_and_id() -> None:
    with pytest.raises(InvalidRecord, match="source_id"):
        Contact(source="csv", source_id="")


def test_answers_are_typed_and_checked_against_their_scale() -> None:
    assert Answer("q1", "nps", 9).normalised == pytest.approx(0.9)
    assert Answer("q2", "rating", 4, scale_min=1, scale_max=5).normalised == pytest.approx(0.75)
    assert Answer("q3", "choice", "Email").value == ("Email",)
    with pytest.raises(InvalidRecord, match="not an NPS score"):
        Answer("q1", "nps", 11)
    with pytest.raises(InvalidRecord, match="outside the rating scale 1-5"):
        Answer("q2", "rating", 6, scale_min=1, scale_max=5)


def test_scores_are_bounded() -> None:
    with pytest.raises(InvalidRecord, match="churn_probability"):
        Score(source="scoring", source_id="a@example.com", churn_probability=1.2, risk_band="high",
              scored_at=datetime(2024, 1, 1, tzinfo=UTC))


def test_every_record_type_round_trips_through_its_payload() -> None:
    at = datetime(2024, 3, 5, 10, 22, tzinfo=UTC)
    records = [
        Contact(source="hub", source_id="1", email=EmailAddress.parse("A@example.com"),
                additional_emails=(EmailAddress.parse("b@example.com"),), merged_ids=("7",), created_at=at,
                properties={"Tags": "vip"}),
        Order(source="shop", source_id="#1", amount="12.50", currency="EUR", status="won", created_at=at,
              closed_at=at, customer_email=EmailAddress.parse("a@example.com")),
        SurveyResponse(source="tf", source_id="r1", form_id="f1", submitted_at=at,
                       respondent_email=EmailAddress.parse("a@example.com"),
                       answers={"q1": Answer("q1", "nps", 3), "q2": Answer("q2", "choice", ("A", "B")),
                                "q3": Answer("q3", "rating", 2, 1, 5), "q4": Answer("q4", "text", "slow delivery")},
                       raw={"token": "r1"}),
        Score(source="scoring", source_id="a@example.com", churn_probability=0.71, risk_band="high", scored_at=at,
              top_reasons=("no order for 142 days; usually orders every 35",), segment="at risk",
              clv=Decimal("310.20"), clv_currency="EUR", sentiment=-0.4, model_version="1"),
    ]
    for record in records:
        assert from_payload(record.kind, to_payload(record)) == record
