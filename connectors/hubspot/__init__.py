"""HubSpot connector: contacts, companies, deals and email events in; scores out as contact properties."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from connectors.base import Connection, Endpoint, ScoreView, Target, register_connector
from connectors.hubspot.client import HubSpotClient, client_from_settings  # the client module registers `doctor`'s check


@register_connector("hubspot")
def connect(settings: Any, endpoint: Endpoint | None = None) -> Connection:
    """The HubSpot source and its one target, the contact properties of the account."""
    from connectors.hubspot.destination import CONTACT_PROPERTIES, HubSpotDestination, desired_values
    from connectors.hubspot.source import HubSpotSource

    if endpoint is None:
        client = client_from_settings(settings)
    else:
        client = HubSpotClient(endpoint.credential, settings.hubspot, host=endpoint.base_url)
    destination = HubSpotDestination(client)

    emails: dict[str, str] = {}  # contact id → its primary email, for the contact fields the engine confirms

    def desired(view: ScoreView) -> Iterator[tuple[str, dict[str, str | None]]]:
        # Never write to an id that was merged away, even one a stale score still names. A run shows its people a
        # part at a time, and an earlier part's changes may still wait to be sent: what each part names adds up.
        destination.merged_away.update(old for contact in view.contacts for old in contact.merged_ids)
        emails.update({c.source_id: c.email.normalised for c in view.contacts if c.email is not None})
        return desired_values(view.scores, view.contacts, view.linked, view.opted_out, destination.names, view.last_nps)

    stamp = frozenset({destination.names["scored_at"]})
    target = Target(destination, desired, stamp, contact_fields=CONTACT_PROPERTIES, person_of=emails.get)
    return Connection("hubspot", HubSpotSource(client), [target])
