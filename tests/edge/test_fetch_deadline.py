"""No channel can stall a sync (security finding 6): a mirror that trickles bytes is cut off
by the fetchers' rate floor, and a FIFO in a ``file://`` channel is refused at once.

Each case runs under a hard bound (a thread joined with a timeout), so a regression shows as
a failure, not as a hung test run.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tuf.api import exceptions

from bentoedge.edge.fetchers import FileFetcher, HttpFetcher


def bounded(call: Callable[[], bytes], seconds: float) -> BaseException | bytes:
    """What ``call`` returned or raised, or a failure when it ran past ``seconds``."""
    box: list[BaseException | bytes] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, f"the fetch was still running after {seconds} s"
    return box[0]


class Trickle(http.server.BaseHTTPRequestHandler):
    """Promises 4 KiB, then sends one byte every 0.2 s (under any per-read timeout)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "4096")
        self.end_headers()
        try:
            for _ in range(4096):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def trickle_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/metadata/timestamp.json"
    httpd.shutdown()
    httpd.server_close()


def test_a_trickling_mirror_is_cut_off(trickle_url: str) -> None:
    fetcher = HttpFetcher(timeout=1.0)  # per read; the rate floor applies after this long
    outcome = bounded(lambda: fetcher.download_bytes(trickle_url, 10_000), 20)  # a hang fails here
    assert isinstance(outcome, exceptions.DownloadError), outcome
    assert "too slowly" in str(outcome)


def test_a_fifo_in_a_folder_channel_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "timestamp.json"
    os.mkfifo(fifo)
    outcome = bounded(lambda: FileFetcher().download_bytes(fifo.as_uri(), 10_000), 10)
    assert isinstance(outcome, exceptions.DownloadError), outcome
    assert "not a regular file" in str(outcome)


def test_plain_files_still_fetch_and_resume(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"0123456789" * 1000)
    assert FileFetcher().download_bytes(f.as_uri(), 20_000) == f.read_bytes()
    chunks, start = FileFetcher().fetch_from(f.as_uri(), 9990)
    assert start == 9990 and b"".join(chunks) == b"0123456789"
