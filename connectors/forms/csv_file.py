"""Reading a CSV export safely: its encoding checked byte by byte, its delimiter found, its rows streamed with
the line each one starts on. Nothing here knows what the rows mean.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

import charset_normalizer

from connectors.base import InputError

CHUNK_BYTES = 1 << 20
MAX_FIELD_CHARS = 64 * 1024 * 1024  # parse anything up to this; per-value limits are applied to the record


def iter_rows(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells), streamed. An unclosed quote is a file-level error."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    with open(path, encoding=encoding, newline="", errors="strict") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        line = 1
        try:
            for cells in reader:
                yield line, cells
                line = reader.line_num + 1
        except csv.Error as exc:
            detail = "a quoted cell starting here is never closed" if "end of data" in str(exc) else str(exc)
            raise InputError(
                f"{path.name} line {line}: {detail} — fix the quoting in the export and import it again",
                path=str(path), line=line,
            ) from None


def read_head(path: Path, encoding: str, chars: int = 65_536) -> str:
    with open(path, encoding=encoding, newline="", errors="strict") as handle:
        return handle.read(chars)


def detect_encoding(path: Path, explicit: str | None) -> str:
    if explicit:
        try:
            return codecs.lookup(explicit).name
        except LookupError:
            raise InputError(f"--encoding {explicit}: not an encoding this tool knows (try utf-8, cp1252, latin-1, utf-16)") from None
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    even_nuls, odd_nuls = head[0::2].count(0), head[1::2].count(0)
    if len(head) >= 8 and odd_nuls > len(head) * 0.4 and even_nuls == 0:
        return "utf-16-le"
    if len(head) >= 8 and even_nuls > len(head) * 0.4 and odd_nuls == 0:
        return "utf-16-be"
    return "utf-8"


def check_decodes(path: Path, encoding: str) -> None:
    """Decode the whole file once, in chunks; the first bad byte is reported with its line and offset."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    newlines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                _raise_decode_error(path, encoding, chunk, exc.start, offset, newlines)
            newlines += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(f"{path.name}: the file ends in the middle of a character ({encoding}) — it looks truncated", path=str(path)) from None


def _raise_decode_error(path: Path, encoding: str, chunk: bytes, start: int, offset: int, newlines: int) -> None:
    line = newlines + chunk[:start].count(b"\n") + 1
    sample = chunk[max(0, start - 2000) : start + 2000]
    candidates = charset_normalizer.from_bytes(sample)
    # Western spreadsheet exports are cp1252 far more often than its look-alikes; say so when it fits too.
    fits_cp1252 = any("cp1252" in (match.encoding, *match.could_be_from_charset) for match in candidates)
    best = candidates.best()
    suspect = "cp1252" if fits_cp1252 or best is None or best.encoding in ("utf_8", "ascii") else best.encoding
    label = {"utf-8-sig": "UTF-8", "utf-8": "UTF-8"}.get(encoding, encoding)
    raise InputError(
        f"{path.name} line {line}: byte 0x{chunk[start]:02X} at offset {offset + start:,} is not valid {label}; "
        f"the file looks like {suspect} — re-export it as UTF-8, or run again with --encoding {suspect}",
        path=str(path), line=line,
    )


def detect_delimiter(sample: str) -> str:
    """The delimiter that splits the header line most often, counted outside quotes: ',' ';' tab or '|'."""
    header = sample.split("\n", 1)[0]
    counts = {d: 0 for d in ",;\t|"}
    inside = False
    for char in header:
        if char == '"':
            inside = not inside
        elif not inside and char in counts:
            counts[char] += 1
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","
