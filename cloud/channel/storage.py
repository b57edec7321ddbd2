"""Where a channel's public files live: a folder (``file://``) or an S3 prefix (``s3://``).

The publisher core never touches files or the network; it hands bytes to a ``Storage``.
Two backends keep the same small contract: ``get`` returns ``None`` for a missing key,
``put`` makes a whole object appear at once (a folder writes aside, fsyncs and renames;
S3 PUTs are atomic by nature), so a device never reads half an upload.

S3 endpoints come from ``AWS_ENDPOINT_URL`` (boto3 reads it), which is how tests point
at a ``moto_server`` process on loopback.  boto3 is imported only when an S3 channel is
used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from bentoedge.bentos.errors import ConfigError
from bentoedge.bentos.keystore import fsync_dir

Progress = Callable[[int], None]


class Storage(Protocol):
    url: str

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> list[str]: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"refusing channel object key {key!r}: keys are relative paths without '..'")
    return key


class FolderStorage:
    """A channel in a local folder; serve it over HTTP with any static file server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.resolve().as_uri()

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / _check_key(key)).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        dest = self.root / _check_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        dest = self.root / _check_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            with open(path, "rb") as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)

    def delete(self, key: str) -> None:
        (self.root / _check_key(key)).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))


class S3Storage:
    """A channel under ``s3://bucket/prefix`` (any S3-compatible endpoint)."""

    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise ConfigError("an s3:// channel needs boto3: pip install 'bentoedge[cloud]'") from None
            self._client = boto3.client("s3")
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            if _status(exc) in (403, 404):
                return None
            raise
        return bytes(resp["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key), Callback=progress)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else self.prefix
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)


def _status(exc: Exception) -> int | None:
    resp = getattr(exc, "response", None) or {}
    try:
        return int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    except (TypeError, ValueError):
        return None


def open_storage(url: str) -> Storage:
    """``file:///path`` or a plain path -> FolderStorage; ``s3://bucket/prefix`` -> S3Storage."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"channel URL {url!r} names a host; use file:///absolute/path")
        path = unquote(parsed.path) if parsed.scheme == "file" else url
        return FolderStorage(Path(path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"channel URL {url!r} lacks a bucket: use s3://BUCKET/PREFIX")
        return S3Storage(parsed.netloc, parsed.path)
    raise ConfigError(f"a publisher writes to file:// or s3:// channels, not {parsed.scheme}:// "
                      "(serve the folder over HTTP for devices)")


def canonical_url(url: str) -> str:
    """One spelling per channel, so its private state folder is found again."""
    return open_storage(url).url
