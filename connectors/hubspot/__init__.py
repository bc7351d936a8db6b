"""HubSpot connector: contacts, companies, deals and email events in; scores out as contact properties."""
