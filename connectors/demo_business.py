"""One made-up small business that every sandbox can be seeded with, so `retention demo` shows the same people in
the CRM, the mailing list and the survey tool.

The people buy the way real customers do (the buy-till-you-die story the scoring models assume): each has their
own purchase rate and spend, some stop buying at some point, and those who stopped open fewer emails and answer
surveys less kindly. Deterministic for a seed; every moment lies before ``now``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from connectors.forms.survey_kit import SeedAnswerSet

FIRST = ("Anna", "Ben", "Chloé", "David", "Emma", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kira", "Luis", "Mia",
         "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tomás", "Uma", "Vera", "Wen", "Yusuf", "Zoë")
LAST = ("Meyer", "García", "Okafor", "Nguyen", "Smith", "Rossi", "Kowalski", "Haddad", "Tanaka", "Dubois", "Berg", "Silva")
TRADES = ("Bakery", "Florist", "Bikes", "Books", "Coffee", "Design", "Garden", "Print", "Studio", "Tailor")
PRAISE = ("The tea arrives fresh and well packed, love it", "Great selection and friendly service",
          "Fast delivery, excellent quality every time", "Always happy with my order", "Wonderful blends, thank you!")
MIXED = ("Good tea but shipping is a bit slow", "Fine overall, prices went up though", "It's ok", "Decent, nothing special",
         "Nice products, the website is confusing")
COMPLAINTS = ("Delivery took two weeks and the box was crushed", "Too expensive for what you get, I buy elsewhere now",
              "My last order was wrong and nobody answered my email", "Quality has gone down, very disappointed",
              "Terrible customer service, I will not order again")
PLANS = ("Starter", "Pro", "Business")
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Customer:
    first_name: str
    last_name: str
    email: str
    company: str
    phone: str
    signed_up: datetime
    stopped_at: datetime | None  # when they stopped buying; None: still a customer
    opens_email: float  # chance of opening a campaign while still buying
    mailing_status: str  # subscribed, unsubscribed, cleaned, pending, or "" (not on the mailing list)


@dataclass(frozen=True)
class Purchase:
    customer: int  # index into Business.customers
    at: datetime
    amount: Decimal


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    subject: str
    sent_at: datetime
    opens: dict[int, datetime]  # customer → when they opened
    clicks: dict[int, datetime]


@dataclass
class Business:
    now: datetime
    customers: list[Customer] = field(default_factory=list)
    purchases: list[Purchase] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)
    answers: list[SeedAnswerSet] = field(default_factory=list)


def make_business(customers: int, seed: int, now: datetime, *, years: float = 2.0, campaigns: int = 12,
                  answers: int | None = None) -> Business:
    """``customers`` people with ``years`` of orders, monthly campaigns over the last year, survey answers."""
    rng = random.Random(seed)
    business = Business(now=now)
    start = now - timedelta(days=365 * years)
    for n in range(customers):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        signed_up = start + (now - 20 * DAY - start) * rng.random()
        # About a third stop buying some time after they start, as small shops see it.
        stops = rng.random() < 0.35
        stopped_at = signed_up + timedelta(days=rng.expovariate(1 / 200)) if stops else None
        if stopped_at is not None and stopped_at >= now:
            stopped_at = None
        status = rng.choices(("subscribed", "unsubscribed", "cleaned", "pending", ""), weights=(78, 7, 2, 3, 10))[0]
        if stopped_at is not None and status == "subscribed" and rng.random() < 0.15:
            status = "unsubscribed"
        business.customers.append(Customer(
            first_name=first, last_name=last, email=f"{first}.{last}.{n}@example.com".lower(),
            company=f"{rng.choice(LAST)} {rng.choice(TRADES)}", phone=f"+49 30 {rng.randint(1_000_000, 9_999_999)}",
            signed_up=signed_up, stopped_at=stopped_at, opens_email=rng.betavariate(2, 3), mailing_status=status,
        ))
        _purchases(business, n, rng)
    _campaigns(business, rng, campaigns)
    _answers(business, rng, answers if answers is not None else max(customers // 5, 1))
    return business


def _purchases(business: Business, index: int, rng: random.Random) -> None:
    customer = business.customers[index]
    end = min(customer.stopped_at or business.now, business.now - DAY)
    mean_gap_days = rng.gammavariate(2.0, 30.0)  # some order every few weeks, some twice a year
    typical = rng.lognormvariate(3.8, 0.5)  # about 45 a basket, some spend far more
    at = customer.signed_up
    while at < end:
        amount = Decimal(f"{typical * rng.uniform(0.6, 1.5):.2f}")
        business.purchases.append(Purchase(index, at.replace(microsecond=0), amount))
        at += timedelta(days=rng.expovariate(1 / mean_gap_days))


def _campaigns(business: Business, rng: random.Random, count: int) -> None:
    for number in range(count):
        sent_at = business.now - timedelta(days=30 * (count - number)) + timedelta(hours=9)
        opens, clicks = {}, {}
        for index, customer in enumerate(business.customers):
            if customer.mailing_status != "subscribed" or customer.signed_up > sent_at:
                continue
            lapsed = customer.stopped_at is not None and customer.stopped_at < sent_at
            if rng.random() < customer.opens_email * (0.25 if lapsed else 1.0):
                opens[index] = sent_at + timedelta(minutes=rng.randint(5, 4_000))
                if rng.random() < 0.3:
                    clicks[index] = opens[index] + timedelta(minutes=rng.randint(1, 30))
        business.campaigns.append(Campaign(f"cmp{number + 1:04d}", f"News from the shop #{number + 1}", sent_at, opens, clicks))


def _answers(business: Business, rng: random.Random, count: int) -> None:
    year_ago = business.now - timedelta(days=365)
    times = sorted(year_ago + (business.now - 2 * DAY - year_ago) * rng.random() for _ in range(count))
    for at in times:
        index = rng.randrange(len(business.customers))
        customer = business.customers[index]
        unhappy = customer.stopped_at is not None and customer.stopped_at < at + timedelta(days=60)
        nps = rng.choices(range(11), weights=(4, 3, 4, 5, 5, 5, 4, 3, 2, 1, 1) if unhappy else (0, 0, 0, 1, 1, 2, 3, 8, 14, 16, 14))[0]
        text = rng.choice(COMPLAINTS if nps <= 6 else MIXED if nps <= 8 else PRAISE)
        anonymous = rng.random() < 0.15
        business.answers.append(SeedAnswerSet(
            submitted_at=at.replace(microsecond=0), email_typed=None if anonymous else customer.email,
            email_via="" if anonymous else rng.choice(("hidden", "question")), nps=nps, why=text,
            rating=max(1, min(5, round(nps / 2))), plan=rng.choice(PLANS), comment="",
        ))
