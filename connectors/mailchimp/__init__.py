"""Mailchimp connector: members, email activity and e-commerce orders in; tags and merge fields out."""
