"""Canary credentials: fake, distinctive values the whole test session runs with, the way users supply credentials
(RETENTION_* environment variables), and the same values the sandbox tests authenticate with. After the session,
none may be found in anything the suite produced: store files and their -wal/-shm, logs, exports, saved models,
CLI output, captured log lines and exception reports, and the run history of PostgreSQL test stores.

tests/conftest.py sets them and runs the scan at the end of the session; tests/test_security.py proves the scan sees
what it claims to see.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from pathlib import Path

CANARY_CREDENTIALS = {
    "RETENTION_HUBSPOT_TOKEN": "pat-na1-c4a7a7c4-5e55-4000-8000-canarycafe01",
    # Mailchimp keys are 32 hex digits and the data centre: this one looks like a real key to every pattern.
    "RETENTION_MAILCHIMP_API_KEY": "c4a7a7c45e5540008000c4a7a7cafe02-us6",
    "RETENTION_TYPEFORM_TOKEN": "tfp_c4a7a7c45e55canarycafe03",
}
HUBSPOT_CANARY = CANARY_CREDENTIALS["RETENTION_HUBSPOT_TOKEN"]
MAILCHIMP_CANARY = CANARY_CREDENTIALS["RETENTION_MAILCHIMP_API_KEY"]
SURVEY_CANARY = CANARY_CREDENTIALS["RETENTION_TYPEFORM_TOKEN"]  # the survey sandboxes' token too


def canaries_in_text(text: str) -> list[str]:
    """The variables whose canary value ``text`` holds."""
    return [name for name, value in CANARY_CREDENTIALS.items() if value in text]


def canaries_in_files(root: Path) -> list[str]:
    """'PATH: VARIABLE' for every file under ``root`` holding a canary, as UTF-8 or UTF-16 (tests write both)."""
    needles = [(name, value.encode(encoding)) for name, value in CANARY_CREDENTIALS.items() for encoding in ("utf-8", "utf-16-le")]
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            with path.open("rb") as handle:
                if path.stat().st_size == 0:
                    continue
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as content:  # stores can be large
                    found.extend(f"{path}: {name}" for name, needle in needles if content.find(needle) != -1)
        except (OSError, ValueError):
            continue  # removed while we looked, or not a regular file after all
    return sorted(set(found))


def canaries_in_postgres(url: str, schemas_like: str = "t\\_%") -> list[str]:
    """'SCHEMA.TABLE: VARIABLE' for every row of the test schemas (records, ledger, run history...) holding a canary."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    found = []
    try:
        with engine.connect() as conn:
            tables = conn.execute(text(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema LIKE :schemas AND table_type = 'BASE TABLE'"), {"schemas": schemas_like}).all()
            for schema, table in tables:
                for name, value in CANARY_CREDENTIALS.items():
                    query = text(f'SELECT 1 FROM "{schema}"."{table}" AS row_ WHERE row_::text LIKE :needle LIMIT 1')
                    if conn.execute(query, {"needle": f"%{value}%"}).first() is not None:
                        found.append(f"{schema}.{table}: {name}")
    finally:
        engine.dispose()
    return found


def report(sightings: Iterable[str]) -> str:
    listed = sorted(set(sightings))
    shown = "\n  ".join(listed[:50]) + (f"\n  … and {len(listed) - 50} more" if len(listed) > 50 else "")
    return f"a canary credential reached {len(listed)} place(s) the suite produced:\n  {shown}"
