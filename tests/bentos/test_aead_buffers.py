"""Decryption hands back a real ``bytes`` object filled in place, and ``wipe`` clears one.

Each holds for both paths: the sequential one of seal version 1 and the thread pool of 1.1.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bentoedge.bentos import aead

VERSIONS = pytest.mark.parametrize("version", ["1", "1.1"])


def _commitment(version: str, ct: bytes) -> str | None:
    return aead.commit(ct) if version == "1.1" else None


def _workers(version: str) -> int:
    return 2 if version == "1.1" else 1


@VERSIONS
def test_decrypt_returns_independent_bytes_equal_to_the_plaintext(version: str) -> None:
    key, plain = os.urandom(32), os.urandom(300_000)
    ct = aead.encrypt(key, plain, b"ad", segment_size=1 << 12)
    seen: list[bytes] = []
    if version == "1":
        out = aead.decrypt_file(
            key, io.BytesIO(ct), len(ct), b"ad", on_plaintext=lambda seg: seen.append(bytes(seg))
        )
        assert b"".join(seen) == plain  # every segment is offered once, in order
    else:
        out = aead.decrypt_file(
            key,
            io.BytesIO(ct),
            len(ct),
            b"ad",
            commitment=_commitment(version, ct),
            workers=_workers(version),
        )
    assert type(out) is bytes and out == plain
    assert (
        hash(out) == hash(bytes(plain))
        and hashlib.sha256(out).digest() == hashlib.sha256(plain).digest()
    )
    again = aead.decrypt(
        key, ct, b"ad", commitment=_commitment(version, ct), workers=_workers(version)
    )
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


def _decrypt_locals(exc: BaseException, name: str) -> dict[str, object]:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == name:
            return dict(tb.tb_frame.f_locals)
        tb = tb.tb_next
    raise AssertionError(f"no {name} frame in the traceback")


@pytest.mark.parametrize("version, flip", [("1", 1), ("1.1", 1), ("1.1", 0)])
def test_a_failed_decrypt_leaves_no_plaintext_behind(version: str, flip: int) -> None:
    key, plain = os.urandom(32), b"secret weights!!" * 1024  # 16 KiB: four 4 KiB segments
    genuine = aead.encrypt(key, plain, segment_size=1 << 12)
    ct = bytearray(genuine)
    if flip:
        ct[aead.HEADER_SIZE + (1 << 12) + aead.TAG_SIZE + 100] ^= 1  # the second segment
    else:  # every segment authentic, but not the committed ciphertext: all four were decrypted
        ct = bytearray(aead.encrypt(key, plain[::-1], segment_size=1 << 12))
    try:
        aead.decrypt(
            key, bytes(ct), commitment=_commitment(version, genuine), workers=_workers(version)
        )
    except aead.IntegrityError as exc:
        out = _decrypt_locals(exc, "_decrypt" if version == "1" else "_decrypt_parallel")["out"]
    else:
        raise AssertionError("a flipped bit decrypted")
    # GCM writes a segment before it checks its tag: the first (authentic) segment and the
    # forged second one were in the buffer, and a traceback's locals reach error reporters.
    assert (
        isinstance(out, bytes | bytearray) and len(out) == len(plain) and out == bytes(len(plain))
    )


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
            b[:n] = self.data[self.pos : self.pos + n]
            self.pos += n
            return n

    readonly: list[bool] = []
    out = aead.decrypt_file(
        key,
        cast(BinaryIO, Trickle(ct)),
        len(ct),
        on_plaintext=lambda seg: readonly.append(seg.readonly),
    )
    assert out == plain and readonly and all(readonly)

    class SeekableTrickle(Trickle):  # what the 1.1 path needs: reads by offset, still short
        def seekable(self) -> bool:
            return True

        def seek(self, pos: int, whence: int = 0) -> int:
            self.pos = pos
            return pos

    for workers in (1, 3):
        got = aead.decrypt_file(
            key,
            cast(BinaryIO, SeekableTrickle(ct)),
            len(ct),
            commitment=aead.commit(ct),
            workers=workers,
        )
        assert got == plain
    with pytest.raises(ValueError, match="sequential"):
        aead.decrypt_file(
            key, io.BytesIO(ct), len(ct), commitment=aead.commit(ct), on_plaintext=print
        )


def test_the_pool_decrypts_on_several_threads_from_a_real_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, plain = os.urandom(32), os.urandom(60 * 4096 + 7)
    ct = aead.encrypt(key, plain, b"ad", segment_size=4096)
    path = tmp_path / "a.enc"
    path.write_bytes(ct)
    threads: set[int] = set()
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.002)  # a slow disk: the readers overlap instead of one doing it all
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    with open(path, "rb", buffering=0) as f:
        out = aead.decrypt_file(key, f, len(ct), b"ad", commitment=aead.commit(ct), workers=3)
    assert out == plain and len(threads) >= 2
    assert 1 <= aead.default_workers() <= aead.MAX_WORKERS


@given(address=st.integers(0, 1 << 40), size=st.integers(0, 1 << 28))
def test_the_huge_page_advice_covers_only_whole_aligned_pages_inside_the_buffer(address: int, size: int) -> None:
    span = aead.huge_page_span(address, size)
    huge = 1 << 21
    if span is None:
        # Nothing advised: small buffer, or no whole aligned page fits in it.
        assert size < 4 * huge or (address + size) // huge * huge <= -(-address // huge) * huge
        return
    start, length = span
    assert start % huge == 0 and length % huge == 0 and length > 0
    assert address <= start and start + length <= address + size  # never a page outside it
    assert start - address < huge and address + size - (start + length) < huge  # every whole page in it


def test_a_large_fresh_buffer_with_huge_pages_decrypts_and_wipes_like_any_other() -> None:
    key, plain = os.urandom(32), os.urandom(12 << 20)
    ct = aead.encrypt(key, plain, b"ad")
    out = aead.decrypt(key, ct, b"ad", workers=2)
    assert out == plain and aead.huge_page_span(id(out), len(out)) is not None
    aead.wipe(out)
    assert out == bytes(len(plain))
