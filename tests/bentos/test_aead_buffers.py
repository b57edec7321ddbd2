"""Decryption hands back a real ``bytes`` object filled in place, and ``wipe`` clears one."""

from __future__ import annotations

import gc
import hashlib
import io
import os

from bentoedge.bentos import aead


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


def _decrypt_locals(exc: BaseException) -> dict[str, object]:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_decrypt":
            return dict(tb.tb_frame.f_locals)
        tb = tb.tb_next
    raise AssertionError("no _decrypt frame in the traceback")


def test_a_failed_decrypt_leaves_no_plaintext_behind() -> None:
    key, plain = os.urandom(32), b"secret weights!!" * 1024  # 16 KiB: four 4 KiB segments
    ct = bytearray(aead.encrypt(key, plain, segment_size=1 << 12))
    ct[aead.HEADER_SIZE + (1 << 12) + aead.TAG_SIZE + 100] ^= 1  # the second segment
    try:
        aead.decrypt(key, bytes(ct))
    except aead.IntegrityError as exc:
        out = _decrypt_locals(exc)["out"]
    else:
        raise AssertionError("a flipped bit decrypted")
    # GCM writes a segment before it checks its tag: the first (authentic) segment and the
    # forged second one were in the buffer, and a traceback's locals reach error reporters.
    assert isinstance(out, bytes | bytearray) and len(out) == len(plain) and out == bytes(len(plain))


def test_callbacks_see_plaintext_read_only_and_short_reads_are_completed() -> None:
    key, plain = os.urandom(32), os.urandom(50_000)
    ct = aead.encrypt(key, plain, segment_size=1 << 12)

    class Trickle(io.RawIOBase):  # an unbuffered file that returns at most 1000 bytes a call
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            n = min(len(b), 1000, len(self.data) - self.pos)
            b[:n] = self.data[self.pos: self.pos + n]
            self.pos += n
            return n

    readonly: list[bool] = []
    out = aead.decrypt_file(key, Trickle(ct), len(ct), on_plaintext=lambda seg: readonly.append(seg.readonly))
    assert out == plain and readonly and all(readonly)


def test_wipe_never_touches_the_interpreters_shared_small_bytes() -> None:
    one = b"xA"[1:]  # CPython hands out its one shared b"A"
    aead.wipe(one)
    assert b"yA"[1:][0] == 65 and one[0] == 65
