"""Generated HubSpot data that looks like a small business: people, their companies, deals across a pipeline, and
marketing email events (opens, clicks, a few bounces and unsubscribes) for about a third of the people.

Deterministic for a seed. Every date lies before the sandbox clock's start, so a test's own changes are the only
objects modified "now". Bulk loading fills the state and sorts each search index once (100k contacts in seconds).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from connectors.hubspot.sandbox import MODIFIED_PROPERTY, iso_ms

if TYPE_CHECKING:
    from connectors.demo_business import Business
    from connectors.hubspot.sandbox import HubSpotSandbox

FIRST = ("Anna", "Ben", "Chloé", "David", "Emma", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kira", "Luis", "Mia",
         "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tomás", "Uma", "Vera", "Wen", "Yusuf", "Zoë")
LAST = ("Meyer", "García", "Okafor", "Nguyen", "Smith", "Rossi", "Kowalski", "Haddad", "Tanaka", "Dubois", "Berg", "Silva")
TRADES = ("Bakery", "Florist", "Bikes", "Books", "Coffee", "Design", "Garden", "Print", "Studio", "Tailor")
LIFECYCLE = ("subscriber", "lead", "marketingqualifiedlead", "opportunity", "customer", "customer", "customer", "evangelist")
STAGES = (  # HubSpot's default sales pipeline: (id, label, isClosed, probability)
    ("appointmentscheduled", "Appointment scheduled", False, "0.2"), ("qualifiedtobuy", "Qualified to buy", False, "0.4"),
    ("presentationscheduled", "Presentation scheduled", False, "0.6"), ("contractsent", "Contract sent", False, "0.9"),
    ("closedwon", "Closed won", True, "1.0"), ("closedlost", "Closed lost", True, "0.0"))
DAY_MS = 86_400_000


def default_pipeline(created: str) -> dict[str, Any]:
    stages = [{"id": sid, "label": label, "displayOrder": order, "metadata": {"isClosed": str(closed).lower(), "probability": p},
               "createdAt": created, "updatedAt": created, "archived": False, "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT"}
              for order, (sid, label, closed, p) in enumerate(STAGES)]
    return {"id": "default", "label": "Sales Pipeline", "displayOrder": 0, "stages": stages,
            "createdAt": created, "updatedAt": created, "archived": False}


def bulk_load(box: HubSpotSandbox, object_type: str, rows: list[tuple[dict[str, Any], int, int]]) -> list[str]:
    """Add objects (properties, created ms, modified ms) without per-object index inserts; returns their ids."""
    ids = []
    with box.lock:
        objects, index = box.objects[object_type], box.index[object_type]
        for props, created_ms, modified_ms in rows:
            box._next_id += 1
            object_id = str(box._next_id)
            stored = {k: None if v is None else str(v) for k, v in props.items()}
            stored.update(hs_object_id=object_id, createdate=iso_ms(created_ms))
            stored[MODIFIED_PROPERTY[object_type]] = iso_ms(modified_ms)
            objects[object_id] = {"id": object_id, "properties": stored, "created_ms": created_ms, "modified_ms": modified_ms}
            index.append((modified_ms, int(object_id)))
            ids.append(object_id)
        index.sort()
    return ids


EMAIL_EVENT_SHARE = 0.3  # of contacts who engaged with marketing email
CAMPAIGNS = ("spring-sale", "newsletter-may", "winback", "loyalty-club")


def seed_email_events(box: HubSpotSandbox, contact_ids: list[str], rng: random.Random, start_ms: int, end_ms: int) -> None:
    """Opens for engaged contacts, clicks on some opens, an occasional bounce or unsubscribe; ids from the box's seed."""
    with box.lock:
        for contact_id in contact_ids:
            if rng.random() >= EMAIL_EVENT_SHARE:
                continue
            for _ in range(rng.randint(1, 3)):
                at = rng.randint(start_ms, end_ms - 60_000)
                campaign = rng.choice(CAMPAIGNS)
                roll = rng.random()
                if roll < 0.04:
                    box.add_event(contact_id, "e_marketing_email_bounced", at, {"hs_email_campaign_id": campaign})
                    continue
                box.add_event(contact_id, "e_marketing_email_opened", at, {"hs_email_campaign_id": campaign})
                if roll < 0.4:
                    box.add_event(contact_id, "e_marketing_email_clicked", at + rng.randint(1, 60_000),
                                  {"hs_email_campaign_id": campaign, "hs_url": f"https://shop.example/{campaign}"})
                elif roll > 0.97:
                    box.add_event(contact_id, "e_marketing_email_unsubscribed", at + rng.randint(1, 60_000), {"hs_email_campaign_id": campaign})


def seed_business(box: HubSpotSandbox, contacts: int, seed: int, deals_per_contact: float = 2.0, merges: int | None = None) -> dict[str, list[str]]:
    """Seed ``contacts`` people, one company per ~8 of them, ~``deals_per_contact`` deals each, a few merges."""
    rng = random.Random(seed)
    end_ms = box.now_ms() - DAY_MS  # everything seeded happened before yesterday
    start_ms = end_ms - 2 * 365 * DAY_MS
    box.pipelines = [default_pipeline(iso_ms(start_ms))]
    companies = []
    for n in range(max(1, contacts // 8)):
        created = rng.randint(start_ms, end_ms)
        name = f"{rng.choice(LAST)} {rng.choice(TRADES)} {n}"
        companies.append(({"name": name, "domain": f"{name.lower().replace(' ', '-')}.example"}, created, rng.randint(created, end_ms)))
    company_ids = bulk_load(box, "companies", companies)
    people = []
    for n in range(contacts):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        created = rng.randint(start_ms, end_ms)
        props = {"firstname": first, "lastname": last, "email": f"{first}.{last}.{n}@example.com".lower(),
                 "lifecyclestage": rng.choice(LIFECYCLE), "hs_email_optout": "true" if rng.random() < 0.06 else "false",
                 "company": companies[n % len(companies)][0]["name"]}
        if rng.random() < 0.05:
            props["hs_additional_emails"] = f"{first}.{n}@mail.example".lower()
        people.append((props, created, rng.randint(created, end_ms)))
    contact_ids = bulk_load(box, "contacts", people)
    deal_rows, owners = [], []
    for contact_id, (_, created, _) in zip(contact_ids, people):
        for _ in range(rng.choice((1, 2, 3)) if deals_per_contact == 2.0 else round(deals_per_contact)):
            opened = rng.randint(created, end_ms)
            stage = rng.choices(STAGES, weights=(1, 1, 1, 1, 6, 2))[0]
            props = {"dealname": f"Order {len(deal_rows) + 1}", "amount": f"{rng.randint(20, 2_000)}.{rng.choice(('00', '50', '99'))}",
                     "pipeline": "default", "dealstage": stage[0], "deal_currency_code": "EUR",
                     "closedate": iso_ms(min(opened + rng.randint(0, 30) * DAY_MS, end_ms)) if stage[2] else None}
            deal_rows.append((props, opened, rng.randint(opened, end_ms)))
            owners.append(contact_id)
    deal_ids = bulk_load(box, "deals", deal_rows)
    for deal_id, contact_id in zip(deal_ids, owners):
        box.associations.setdefault(deal_id, set()).add(contact_id)
    seed_email_events(box, contact_ids, rng, start_ms, end_ms)
    for n in range(merges if merges is not None else contacts // 200):
        survivor, absorbed = contact_ids[2 * n], contact_ids[2 * n + 1]
        box.merge(survivor, absorbed)
        box._touch("contacts", survivor, rng.randint(start_ms, end_ms - DAY_MS))  # merged while seeding, not "now"
    return {"contacts": [c for c in contact_ids if c in box.objects["contacts"]], "companies": company_ids, "deals": deal_ids}


def load_business(box: HubSpotSandbox, business: Business) -> dict[str, list[str]]:
    """The demo business as a free HubSpot CRM holds it: its customers as contacts, every purchase a won deal."""
    box.pipelines = [default_pipeline(iso_ms(int(business.now.timestamp() * 1000) - 3 * 365 * DAY_MS))]
    rows = []
    for customer in business.customers:
        signed_ms = int(customer.signed_up.timestamp() * 1000)
        rows.append(({"firstname": customer.first_name, "lastname": customer.last_name, "email": customer.email,
                      "phone": customer.phone, "company": customer.company, "lifecyclestage": "customer",
                      "hs_email_optout": "true" if customer.mailing_status == "unsubscribed" else "false"}, signed_ms, signed_ms))
    contact_ids = bulk_load(box, "contacts", rows)
    deals = []
    for number, purchase in enumerate(business.purchases):
        at_ms = int(purchase.at.timestamp() * 1000)
        deals.append(({"dealname": f"Order {number + 1001}", "amount": str(purchase.amount), "pipeline": "default",
                       "dealstage": "closedwon", "deal_currency_code": "EUR", "closedate": iso_ms(at_ms)}, at_ms, at_ms))
    deal_ids = bulk_load(box, "deals", deals)
    for deal_id, purchase in zip(deal_ids, business.purchases):
        box.associations.setdefault(deal_id, set()).add(contact_ids[purchase.customer])
    return {"contacts": contact_ids, "deals": deal_ids}
