"""The device's only doors to the update channel: file, HTTP(S) and S3 fetchers.

Each is a ``tuf.ngclient.FetcherInterface`` (so ngclient downloads metadata through it)
with one addition, ``fetch_from(url, offset)``, which resumes a target download where a
previous attempt stopped: an HTTP ``Range`` request, a seek for a file, a ranged
``GetObject`` for S3.  Every fetcher counts its requests and bytes, which is what the
benchmark reports as the cost of a poll.

A missing object is reported as ``DownloadHTTPError(404)`` whatever the transport,
because that is how ngclient learns there is no newer root.  boto3 is imported only when
an ``s3://`` channel is used.

No fetch can stall a sync: besides the per-read timeout, a download must keep an average of
``MIN_RATE`` bytes a second once its first ``timeout`` seconds are over (a mirror trickling a
byte every few seconds is cut off, a slow but honest link is not), and a ``file://`` channel
reads regular files only (a FIFO named ``timestamp.json`` would block forever).
"""

from __future__ import annotations

import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlparse

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from bentoedge.bentos.errors import ConfigError

CHUNK = 1 << 16
#: The slowest average a download may keep after its first ``timeout`` seconds (16 KiB/s).
MIN_RATE = 16 * 1024


class CountingFetcher(FetcherInterface):
    """Counts requests and bytes; subclasses implement ``_open(url, offset)``."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.requests = 0
        self.bytes = 0

    def _open(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        raise NotImplementedError

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        start, got = time.monotonic(), 0
        for chunk in chunks:
            self.bytes += len(chunk)
            got += len(chunk)
            if time.monotonic() - start > self.timeout + got / MIN_RATE:
                raise exceptions.DownloadError(f"the channel sends too slowly: {got} bytes in "
                                               f"{time.monotonic() - start:.0f} s (needs {MIN_RATE} B/s on average)")
            yield chunk

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests += 1
        chunks, _ = self._open(url, 0)
        return self._counted(chunks)

    def fetch_from(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        """Bytes of ``url`` from ``offset``; returns the offset actually served (0 if the
        transport cannot resume, and the caller must start over)."""
        self.requests += 1
        try:
            chunks, start = self._open(url, offset)
        except exceptions.DownloadError:
            raise
        except Exception as exc:
            raise exceptions.DownloadError(f"failed to download {url}: {exc}") from exc
        return self._counted(chunks), start


class FileFetcher(CountingFetcher):
    """``file:///path`` channels: a folder on local disk or a mounted share."""

    def _open(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        path = unquote(urlparse(url).path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise exceptions.DownloadHTTPError(f"{path} not found", 404) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise exceptions.DownloadError(f"{path} is not a regular file; a channel folder holds plain files only")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
        f.seek(offset)
        return _read_and_close(f), offset


def _read_and_close(f: Any) -> Iterator[bytes]:
    # read1 returns what has arrived instead of waiting for a whole chunk, so the rate
    # check above sees a trickle as it happens.
    read = getattr(f, "read1", f.read)
    try:
        while chunk := read(CHUNK):
            yield chunk
    finally:
        f.close()


class HttpFetcher(CountingFetcher):
    """``http(s)://`` channels, with the standard library only (devices stay small)."""

    def _open(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        req = urllib.request.Request(url, headers={"User-Agent": "bentoedge-agent"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416:  # asked beyond the end: the partial file is already complete or wrong
                raise exceptions.DownloadHTTPError("range not satisfiable", 416) from None
            raise exceptions.DownloadHTTPError(f"HTTP {exc.code} for {url}", exc.code) from None
        start = offset if offset and resp.status == 206 else 0
        return _read_and_close(resp), start


class S3Fetcher(CountingFetcher):
    """``s3://bucket/prefix`` channels; endpoint from ``AWS_ENDPOINT_URL`` like boto3."""

    def __init__(self, timeout: float = 30.0, client: Any = None) -> None:
        super().__init__(timeout)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ConfigError("an s3:// channel needs boto3 on the device: pip install boto3") from None
            self._client = boto3.client("s3", config=Config(connect_timeout=self.timeout,
                                                            read_timeout=self.timeout,
                                                            retries={"max_attempts": 2}))
        return self._client

    def _open(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        parsed = urlparse(url)
        args: dict[str, Any] = {"Bucket": parsed.netloc, "Key": unquote(parsed.path).lstrip("/")}
        if offset:
            args["Range"] = f"bytes={offset}-"
        try:
            resp = self.client.get_object(**args)
        except Exception as exc:
            code = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in (403, 404, 416):
                raise exceptions.DownloadHTTPError(f"s3 {code} for {url}", int(code)) from None
            raise
        start = offset if offset and "ContentRange" in resp else 0
        body = resp["Body"]
        return _read_and_close(body), start


def fetcher_for(url: str, timeout: float = 30.0) -> CountingFetcher:
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"channel URL {url!r} names a host; use file:///absolute/path")
        return FileFetcher(timeout)
    if scheme in ("http", "https"):
        return HttpFetcher(timeout)
    if scheme == "s3":
        return S3Fetcher(timeout)
    raise ConfigError(f"channel URL {url!r}: use file:///path, http(s)://host/path or s3://bucket/prefix")
