"""Mailchimp connector: members, email activity and e-commerce orders in; tags and merge fields out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from connectors.base import Connection, Endpoint, ScoreView, Target, register_connector
from connectors.mailchimp.client import MailchimpClient  # the client module registers `doctor`'s check


@register_connector("mailchimp")
def connect(settings: Any, endpoint: Endpoint | None = None) -> Connection:
    """The Mailchimp source (every allow-listed audience) and one target per allow-listed audience."""
    from connectors.mailchimp.destination import MailchimpDestination
    from connectors.mailchimp.mapping import CONTACT_MERGE_FIELDS, desired_for_audience
    from connectors.mailchimp.source import MailchimpSource

    section = settings.mailchimp
    if endpoint is None:
        client = MailchimpClient.from_settings(section)
    else:
        client = MailchimpClient(section, api_key=endpoint.credential, base_url=endpoint.base_url)
    targets = []
    for list_id in section.audiences:
        destination = MailchimpDestination(client, list_id)

        def desired(view: ScoreView, list_id: str = list_id,
                    destination: MailchimpDestination = destination) -> Iterator[tuple[str, dict[str, str | None]]]:
            # The members the source just read are the audience as it stands: no second read before writing. A run
            # shows them a part at a time, each added to those of the parts before (whose changes may still wait).
            destination.know_members(view.contacts)
            return desired_for_audience(view.scores, view.contacts, list_id, section.tag_prefix, section.add_new_contacts,
                                        view.linked, view.opted_out)

        targets.append(Target(destination, desired, contact_fields=CONTACT_MERGE_FIELDS))
    return Connection("mailchimp", MailchimpSource(client), targets, close=client.close)
