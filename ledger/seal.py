"""Ledger format v2: one seal per appended batch, chaining the batch before it.

A v2 batch is a run of lines ``{"v":2,"seq":N,...}`` (null fields left out), the last of
which ends with the batch's seal: ``"first_seq":F,"lines":L,"seal":"<32 hex>"``. The seal is
SHA-256 (first 128 bits, hex) of the previous seal (or the previous v1 line's ``hash``,
:data:`~ledger.schema.GENESIS_HASH` for a ledger's first batch) and the batch's exact bytes,
newlines included, with the last line's ``seal`` field cut out (:func:`batch_body`), so a
changed, dropped, inserted or reordered byte of any line of the batch breaks it. A batch
of one event is one line. A batch holds at most :data:`SEAL_MAX_LINES` lines: the writer
seals a longer append in pieces (in one write), so a reader holds at most that many lines
waiting for their seal, and ``ledger verify`` names a changed batch to within that many
lines. Why 256: reading (parsing) cost 3.6-3.8 us a line here with batches of 64 to 256
lines, 5.2-5.5 us at 512 and 1,000, 7.3 us at 10,000 (a batch's parsed lines, held until its
seal, no longer fit the core's cache; and fresh memory costs here at its first touch),
while writing cost the same within the noise, and a seal costs a batch of 256 ~0.2 byte and
~10 ns a line.

Lines of a batch whose seal is missing (a crash cut the write short) are no events: a
reader skips them as torn, the next writer marks them with a ``recover`` event, exactly as
a torn v1 line (:mod:`ledger.lines`).

Why no Merkle root over line hashes (which would let verify name the changed line, not
its batch): it costs a hash per line again, the cost v2 removes. ``python -m
benchmarks.ledger_seal`` measures both: on the 2-core VM, SHA-256 seals batches at ~200 ns an
event (BLAKE2b ~380: this CPU has SHA instructions), a Merkle root costs ~1.2 us an event. Verify still names the line of
every problem a line shows by itself (its JSON, its seq, its fields, its transition).

>>> body = b'{"v":2,"seq":0,"ts_us":0,"kind":"deposit","first_seq":0,"lines":1}'
>>> line = sealed_line(body, seal_digest("0" * 32, [body]))
>>> line[-44:]
b',"seal":"...'
>>> split_seal(line.rstrip(b"\\n"))[1] == seal_digest("0" * 32, [body])
True
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import Iterable, Optional

from ledger.schema import NULLABLE_FIELDS

FORMAT = 2
SEAL_MAX_LINES = 256  # a batch's lines at most: a longer append is sealed in pieces (in one write)
LINE_PREFIX = b'{"v":2,"seq":'  # how every v2 line starts
SEAL_KEY = b',"seal":"'
SEAL_SUFFIX_BYTES = len(SEAL_KEY) + 32 + len(b'"}')  # 43: the tail a batch's last line ends with
#: ``,"field":null`` of a nullable field, which v2 leaves out. No JSON string holds ``,"``
#: (its quotes are escaped), so this matches only a field.
NULL_FIELD = re.compile(rb',"(?:%s)":null' % b"|".join(name.encode() for name in NULLABLE_FIELDS))
NULL_HINT = b":null"  # absent from a line, no field of it is null (a cheap test before the regex)


def seal_digest(previous: str, parts: Iterable[bytes]) -> str:
    """The seal of a batch whose bytes (see :func:`batch_body`) are ``parts``, after ``previous``."""
    digest = sha256(previous.encode())
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:32]


def seal_fields(first_seq: int, lines: int) -> bytes:
    """The fields the last line of a batch gets before its seal (the seal covers them)."""
    return b',"first_seq":%d,"lines":%d}' % (first_seq, lines)


def sealed_line(body: bytes, digest: str) -> bytes:
    """The last line of a batch, with its newline: ``body`` (ending in :func:`seal_fields`) and the seal."""
    return b'%s,"seal":"%s"}\n' % (body[:-1], digest.encode())


def split_seal(line: bytes) -> tuple[bytes, str]:
    """A batch's last line (without its newline) as (its body without ``seal``, the seal); ValueError if it has none."""
    if line[-1:] in (b" ", b"\t", b"\r"):
        line = line.rstrip(b" \t\r")
    if len(line) < SEAL_SUFFIX_BYTES or line[-SEAL_SUFFIX_BYTES:-34] != SEAL_KEY or line[-2:] != b'"}':
        raise ValueError("no seal field at the end of the line")
    return line[:-SEAL_SUFFIX_BYTES] + b"}", line[-34:-2].decode("ascii", "replace")


def batch_body(lines: list[bytes], last: bytes) -> list[bytes]:
    """What a batch's seal covers: its lines before the last (without newlines: they are added), then
    the last without its seal (see :func:`split_seal`)."""
    parts = []
    for line in lines:
        parts.append(line)
        parts.append(b"\n")
    parts.append(split_seal(last)[0])
    return parts


def without_nulls(text: bytes) -> bytes:
    """``text`` (JSON lines) with every nullable field that is null left out."""
    return NULL_FIELD.sub(b"", text) if NULL_HINT in text else text


def sealed_seq(raw: bytes) -> Optional[int]:
    """The seq of a whole line that ends a v2 batch (with its newline), as the writer writes it; else None.

    Nothing torn ends so: a cut line has no seal at its end, and no JSON string holds ``,"seal":"``.
    """
    if not raw.startswith(LINE_PREFIX) or raw[-SEAL_SUFFIX_BYTES - 1:-35] != SEAL_KEY or not raw.endswith(b'"}\n'):
        return None
    end = raw.find(b",", len(LINE_PREFIX), len(LINE_PREFIX) + 20)
    digits = raw[len(LINE_PREFIX):end]
    return int(digits) if end > 0 and digits.isdigit() else None
