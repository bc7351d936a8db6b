"""Seeds a Mailchimp sandbox with a realistic small shop: one audience, sent campaigns with activity, a store.

Status mix per 10,000 members: 500 unsubscribed, 200 cleaned, 50 archived, 100 pending, the rest subscribed
(the acceptance scenario); some members carry tags the shop made itself ("VIP", "newsletter-2023"), which the
tool must never touch.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import TYPE_CHECKING

from connectors.mailchimp.sandbox import iso, subscriber_hash

if TYPE_CHECKING:
    from connectors.demo_business import Business
    from connectors.mailchimp.sandbox import MailchimpSandbox

FIRST = (
    "Ana",
    "Ben",
    "Chloé",
    "Dev",
    "Eva",
    "Femi",
    "Greta",
    "Hiro",
    "Ines",
    "Jon",
    "Kai",
    "Lena",
    "Mo",
    "Nia",
)
LAST = (
    "Silva",
    "Meyer",
    "Okafor",
    "Rossi",
    "Dubois",
    "Tanaka",
    "Novak",
    "Larsen",
    "Khan",
    "Brown",
    "García",
)
SHOP_TAGS = ("VIP", "newsletter-2023", "wholesale", "event-visitor")
LIST_ID = "a1b2c3d4e5"
STORE_ID = "shop-1"


def status_for(index: int, size: int) -> str:
    """Deterministic status by position: exactly 5 % unsubscribed, 2 % cleaned, 0.5 % archived, 1 % pending."""
    per_10k = (index * 10_000) // max(size, 1)
    if per_10k < 500:
        return "unsubscribed"
    if per_10k < 700:
        return "cleaned"
    if per_10k < 750:
        return "archived"
    if per_10k < 850:
        return "pending"
    return "subscribed"


def member_email(index: int) -> str:
    return f"member{index:06d}@example.com"


def seed_audience(
    sandbox: MailchimpSandbox,
    size: int,
    seed: int,
    campaigns: int = 3,
    orders: int | None = None,
) -> str:
    """Fill ``sandbox``; returns the audience id. Same seed, same shop."""
    rng = random.Random(seed)
    now = sandbox.clock.now()
    list_id = sandbox.add_list("Sandbox Shop customers", LIST_ID)
    emails = []
    for index in range(size):
        email = member_email(index)
        signup = now - timedelta(days=rng.randint(5, 900), seconds=rng.randint(0, 86_399))
        sandbox.add_member(
            list_id,
            email,
            status_for(index, size),
            merge_fields={"FNAME": rng.choice(FIRST), "LNAME": rng.choice(LAST)},
            member_rating=rng.randint(1, 5),
            stats={
                "avg_open_rate": round(rng.random() * 0.6, 2),
                "avg_click_rate": round(rng.random() * 0.1, 2),
            },
            timestamp_signup=iso(signup),
            timestamp_opt=iso(signup + timedelta(minutes=3)),
            last_changed=iso(signup + timedelta(days=rng.randint(0, 4))),
        )
        emails.append(email)
        if rng.random() < 0.15:
            sandbox.tag_member(list_id, subscriber_hash(email), rng.choice(SHOP_TAGS))
    reachable = [e for i, e in enumerate(emails) if status_for(i, size) == "subscribed"]
    for number in range(campaigns):
        sent = now - timedelta(days=7 * (campaigns - number))
        campaign_id = f"cmp{number + 1:04d}"
        activity: dict[str, list[dict[str, str]]] = {}
        unsubscribed: dict[str, str] = {}
        for email in rng.sample(reachable, min(len(reachable), 200)):
            moment = sent + timedelta(minutes=rng.randint(5, 3_000))
            events = [{"action": "open", "timestamp": iso(moment), "ip": "203.0.113.9"}]
            roll = rng.random()
            if roll < 0.3:
                events.append(
                    {
                        "action": "click",
                        "timestamp": iso(moment + timedelta(minutes=1)),
                        "url": "https://shop.example.com/sale",
                        "ip": "203.0.113.9",
                    }
                )
            elif roll < 0.35:
                events = [{"action": "bounce", "timestamp": iso(moment), "type": "soft"}]
            elif roll < 0.37:
                unsubscribed[email] = iso(moment + timedelta(minutes=2))
            activity[email] = events
        sandbox.campaigns[campaign_id] = {
            "id": campaign_id,
            "web_id": 1000 + number,
            "type": "regular",
            "status": "sent",
            "create_time": iso(sent - timedelta(days=1)),
            "send_time": iso(sent),
            "emails_sent": len(reachable),
            "recipients": {"list_id": list_id, "list_name": "Sandbox Shop customers"},
            "settings": {
                "subject_line": f"Weekly picks #{number + 1}",
                "title": f"Weekly {number + 1}",
            },
            "_activity": activity,
            "_unsubscribed": unsubscribed,
        }
    _seed_store(
        sandbox,
        rng,
        list_id,
        emails,
        orders if orders is not None else min(size, 2_000),
    )
    return list_id


def _seed_store(
    sandbox: MailchimpSandbox,
    rng: random.Random,
    list_id: str,
    emails: list[str],
    orders: int,
) -> None:
    now = sandbox.clock.now()
    customers: dict[str, dict[str, object]] = {}
    order_rows = []
    for number in range(orders):
        email = rng.choice(emails)
        customer = customers.setdefault(
            email,
            {
                "id": f"cust-{subscriber_hash(email)[:8]}",
                "email_address": email,
                "opt_in_status": False,
                "orders_count": 0,
                "total_spent": 0.0,
            },
        )
        amount = round(rng.uniform(12, 240), 2)
        customer["orders_count"] += 1
        customer["total_spent"] = round(customer["total_spent"] + amount, 2)
        placed = now - timedelta(days=rng.randint(1, 700), minutes=rng.randint(0, 1_439))
        order_rows.append(
            {
                "id": f"ord-{number + 1:06d}",
                "store_id": STORE_ID,
                "customer": {"id": customer["id"], "email_address": email},
                "currency_code": "EUR",
                "order_total": amount,
                "financial_status": rng.choice(("paid",) * 12 + ("refunded", "pending")),
                "processed_at_foreign": iso(placed),
                "updated_at_foreign": iso(placed),
            }
        )
    sandbox.stores[STORE_ID] = {
        "id": STORE_ID,
        "list_id": list_id,
        "name": "Sandbox Shop",
        "platform": "custom",
        "currency_code": "EUR",
        "_customers": customers,
        "_orders": order_rows,
    }


def load_business(sandbox: MailchimpSandbox, business: Business) -> str:
    """The demo business's mailing list: its customers who signed up, and a year of monthly campaigns."""
    list_id = sandbox.add_list("Tea shop customers", LIST_ID)
    rng = random.Random(len(business.customers))
    for customer in business.customers:
        if not customer.mailing_status:
            continue
        sandbox.add_member(
            list_id, customer.email, customer.mailing_status,
            merge_fields={"FNAME": customer.first_name, "LNAME": customer.last_name},
            member_rating=rng.randint(1, 5),
            stats={"avg_open_rate": round(customer.opens_email, 2), "avg_click_rate": round(customer.opens_email * 0.3, 2)},
            timestamp_signup=iso(customer.signed_up), timestamp_opt=iso(customer.signed_up + timedelta(minutes=3)),
            last_changed=iso(customer.signed_up + timedelta(minutes=3)),
        )
        if rng.random() < 0.1:
            sandbox.tag_member(list_id, subscriber_hash(customer.email), rng.choice(SHOP_TAGS))
    for campaign in business.campaigns:
        activity = {}
        for index, opened in campaign.opens.items():
            events = [{"action": "open", "timestamp": iso(opened), "ip": "203.0.113.9"}]
            if index in campaign.clicks:
                events.append({"action": "click", "timestamp": iso(campaign.clicks[index]), "url": "https://shop.example.com/new", "ip": "203.0.113.9"})
            activity[business.customers[index].email] = events
        sandbox.campaigns[campaign.campaign_id] = {
            "id": campaign.campaign_id, "web_id": 2000 + len(sandbox.campaigns), "type": "regular", "status": "sent",
            "create_time": iso(campaign.sent_at - timedelta(days=1)), "send_time": iso(campaign.sent_at),
            "emails_sent": sum(1 for c in business.customers if c.mailing_status == "subscribed"),
            "recipients": {"list_id": list_id, "list_name": "Tea shop customers"},
            "settings": {"subject_line": campaign.subject, "title": campaign.subject},
            "_activity": activity, "_unsubscribed": {},
        }
    return list_id
