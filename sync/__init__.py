"""The sync side: settings, the state store, the CLI."""
