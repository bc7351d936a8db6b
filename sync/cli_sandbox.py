"""`retention sandbox VENDOR`: serve a vendor emulator on loopback, seeded with a made-up small business.

Each vendor's sandbox module offers ``demo(size, seed) -> Sandbox``; this command only finds and serves it.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from connectors.base import ConfigError
from connectors.sandbox import serve_forever
from sync.cli import app, out

# vendor name on the command line → (module holding ``demo``, what --size counts)
SANDBOXES = {
    "hubspot": ("connectors.hubspot.sandbox", "contacts"),
    "mailchimp": ("connectors.mailchimp.sandbox", "members"),
    "typeform": ("connectors.forms.typeform_sandbox", "responses"),
    "surveymonkey": ("connectors.forms.surveymonkey_sandbox", "responses"),
    "google-forms": ("connectors.forms.google_sandbox", "responses"),
}


@app.command("sandbox")
def sandbox_command(
    vendor: Annotated[str, typer.Argument(help="hubspot, mailchimp, typeform, surveymonkey or google-forms.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    size: Annotated[
        int,
        typer.Option("--size", "--contacts", "--members", "--responses", help="How many contacts / members / responses to seed."),
    ] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed for the generated data: the same seed gives the same business.")] = 1,
) -> None:
    """Serve a local emulator of a vendor's API, to try the connectors without an account. Ctrl-C stops it."""
    if vendor not in SANDBOXES:
        raise ConfigError(f"sandbox: unknown vendor {vendor!r}; choose one of {', '.join(SANDBOXES)}")
    if not 0 <= port <= 65_535 or size < 0:
        raise ConfigError("sandbox: --port must be 0-65535 and --size at least 0")
    module_name, counted = SANDBOXES[vendor]
    sandbox = importlib.import_module(module_name).demo(size, seed)

    def announce(url: str) -> None:
        out.print(f"{vendor} sandbox with {size:,} {counted} at {url} (Ctrl-C stops it)")

    serve_forever(sandbox, port, announce)
