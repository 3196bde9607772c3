"""A fixed corpus of poison messages: what a broken or hostile producer can put on a topic.

Every consumer must survive every one of these: the message goes to the dead-letter topic with its reason (or,
where the schema allows it, is processed as an ordinary message), the consumer keeps running, and the good
message after it is processed. ``poison_corpus(example)`` builds the corpus for one message schema from one
valid message of it:

- the shape breakers, the same for every topic: not JSON, empty, a JSON array, invalid UTF-8, 200 KB of NUL
  bytes (whose escaped copy is larger than a producer's 1 MB limit: dead-lettering must bound what it copies),
  deeply nested JSON, and a 3 MB message (past the broker clients' default size limit: sent with a raised one);
- mutations of the valid message, one field at a time: an integer at 2^63 and below -2^63 (past every signed
  64-bit column), a float of 1e30, NaN and infinity (JSON has no NaN; many parsers accept the token), a
  1 MB string, a field removed, a field of the wrong type.

The corpus is deterministic (no randomness), so a failure names the message that caused it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

BIG_BYTES = 3_000_000
"""The oversized message: past librdkafka's default ``message.max.bytes`` (1,000,000) — a producer must raise its
limit to send it, and a consumer must take it."""

PRODUCER_MAX_BYTES = 4_000_000
"""The ``message.max.bytes`` a test producer needs to send ``BIG_BYTES``."""


def _dump(message: Mapping[str, Any]) -> bytes:
    # allow_nan: json writes NaN / Infinity tokens, which strict JSON forbids but lenient parsers read
    return json.dumps(message, allow_nan=True).encode()


def shape_breakers() -> list[tuple[str, bytes]]:
    """Messages no schema accepts."""
    nested = b"[" * 10_000 + b"]" * 10_000
    return [
        ("not_json", b"{broken"),
        ("empty", b""),
        ("json_array", b"[1, 2, 3]"),
        ("json_string", b'"just a string"'),
        ("invalid_utf8", b'{"x": "\xff\xfe\xfa"}'),
        ("nul_bytes_200kb", b"\x00" * 200_000),
        ("nested_10k", nested),
        ("big_3mb", b'{"padding": "' + b"a" * BIG_BYTES + b'"}'),
    ]


def field_mutations(example: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """``example`` with one field made hostile at a time (the name says which field and how)."""
    out: list[tuple[str, bytes]] = []
    for key, value in example.items():
        if isinstance(value, bool):
            variants: list[tuple[str, Any]] = [("string", "yes")]
        elif isinstance(value, int):
            variants = [("int_2e63", 2**63), ("int_below_min", -(2**63) - 1), ("string", "12x")]
        elif isinstance(value, float):
            variants = [("float_1e30", 1e30), ("nan", float("nan")), ("inf", float("inf")), ("string", "1.0x")]
        elif isinstance(value, str):
            variants = [("string_1mb", "x" * 1_000_000), ("number", 12345)]
        else:
            variants = [("string", "x")]
        for how, hostile in variants:
            out.append((f"{key}:{how}", _dump({**example, key: hostile})))
        out.append((f"{key}:missing", _dump({k: v for k, v in example.items() if k != key})))
    return out


def poison_corpus(example: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The shape breakers and the field mutations of ``example`` (a valid message of the topic's schema)."""
    return shape_breakers() + field_mutations(example)
