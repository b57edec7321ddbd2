"""Decryption hands back a real ``bytes`` object filled in place, and ``wipe`` clears one."""

from __future__ import annotations

import gc
import hashlib
import io
import os

from bentos import aead


def test_decrypt_returns_independent_bytes_equal_to_the_plaintext() -> None:
    key, plain = os.urandom(32), os.urandom(300_000)
    ct = aead.encrypt(key, plain, b"ad", segment_size=1 << 12)
    seen: list[bytes] = []
    out = aead.decrypt_file(key, io.BytesIO(ct), len(ct), b"ad", on_plaintext=lambda seg: seen.append(bytes(seg)))
    assert type(out) is bytes and out == plain
    assert b"".join(seen) == plain  # every segment is offered once, in order
    assert hash(out) == hash(bytes(plain)) and hashlib.sha256(out).digest() == hashlib.sha256(plain).digest()
    again = aead.decrypt(key, ct, b"ad")
    assert again == plain and again is not out
    del out
    gc.collect()
    assert again == plain  # freeing one result leaves the other intact


def test_wipe_zeroes_the_plaintext_in_place() -> None:
    key = os.urandom(32)
    ct = aead.encrypt(key, b"secret weights" * 1000)
    plain = aead.decrypt(key, ct)
    aead.wipe(plain)
    assert plain == bytes(len(plain))
    buf = bytearray(b"abc")
    aead.wipe(buf)
    assert buf == bytearray(3)
