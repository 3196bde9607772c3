"""Dead letters are bounded, so dead-lettering a poison message cannot itself fail."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("payload", [b"\x00" * 200_000, b"{" * 3_000_000, "é".encode() * 100_000])
def test_a_dead_letter_is_bounded_whatever_the_payload(payload: bytes) -> None:
    """Dead-lettering must not fail: an escaped NUL is 6 bytes of JSON, so a 200 KB message of NULs would be a
    1.2 MB dead letter, over the producer's 1 MB limit, if the payload were copied whole."""
    import hashlib

    from systems.common.broker import DeadLetter, Record, send_to_dead_letter

    sent: list[tuple[str, bytes]] = []

    class Capture:
        def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            sent.append((topic, value))

        def flush(self, timeout_s: float = 30.0) -> None: ...

        def close(self) -> None: ...

    send_to_dead_letter(Capture(), Record("t", 0, 7, b"k", payload, 0), "too big")
    ((topic, value),) = sent
    letter = DeadLetter.model_validate_json(value)
    assert topic == "t.dlq" and len(value) < 200_000
    assert letter.value_bytes == len(payload) and letter.truncated
    assert letter.value_sha256 == hashlib.sha256(payload).hexdigest() and letter.reason == "too big"
