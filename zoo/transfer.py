"""One download attempt into a hidden, resumable staging file (used by :func:`zoo.weights.download`).

Where the bytes go
------------------
A download of ``dest`` streams into the hidden staging file ``.<name>.part`` next to it, with a
small JSON record ``.<name>.part.json`` (the URL, the server's ``ETag`` / ``Last-Modified`` and
the announced total size). The file at ``dest`` appears only through ``os.replace`` once every
byte arrived and the sha256 of the **whole** file matched, so ``dest`` never holds a partial or
unverified file and nothing reads the staging file as weights.

Resuming (HTTP ``Range``, RFC 9110 section 14)
----------------------------------------------
When an attempt is cut off (connection reset, timeout, fewer bytes than ``Content-Length``,
Ctrl-C), the staging file is kept. The next attempt for the same ``dest`` and URL sends
``Range: bytes=N-`` (N = bytes already staged) and, when the server gave a validator,
``If-Range: <ETag or Last-Modified>``:

- ``206 Partial Content`` starting at N: the new bytes are appended;
- ``200 OK`` (the server ignores ranges, or the file changed so ``If-Range`` failed): the
  staging file is emptied and the transfer restarts from zero;
- ``416 Range Not Satisfiable`` or a ``206`` that does not start at N: restart from zero.

A partial file is resumed only when it can be trusted: same URL, and either the expected sha256
is known (checked over the whole file at the end) or the server gave a validator for
``If-Range``; otherwise the transfer restarts. A wrong sha256 deletes the staging file. A
staging file that received no byte is removed.

Concurrency: the staging file is locked (``fcntl.flock``); a second process downloading the same
``dest`` at the same time (or a system without ``fcntl``) uses a private temporary file instead,
which is not resumable. A read-only cache makes :mod:`zoo.weights` download into a fresh temporary
folder, so such downloads do not resume either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, Callable

from zoo.io import publish

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no resumable staging
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB
USER_AGENT = "zoo-weights/1"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)

__all__ = ["Failed", "fetch", "staging_paths"]


class Failed(Exception):
    """One attempt failed; ``str(exc)`` says why (``zoo.weights`` collects it per mirror)."""


def staging_paths(dest: str | os.PathLike) -> tuple[Path, Path]:
    """The hidden staging file of ``dest`` and its JSON record: ``.<name>.part``, ``.<name>.part.json``."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.part", dest.parent / f".{dest.name}.part.json"


class _Staging:
    """The staging file of one destination, locked for this process (or a private temp file)."""

    def __init__(self, dest: Path) -> None:
        self.path, self.record_path = staging_paths(dest)
        self.resumable = False
        fd = -1
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # the file may have been published or removed between open and lock
                self.resumable = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                self.resumable = False
            if not self.resumable:
                os.close(fd)
        if not self.resumable:
            logger.info("%s is being downloaded by another process (or cannot be locked); "
                        "downloading into a private temporary file", dest)
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            self.path, self.record_path = Path(name), None
        self.fh: BinaryIO = os.fdopen(fd, "r+b")

    def size(self) -> int:
        self.fh.seek(0, os.SEEK_END)
        return self.fh.tell()

    def record(self) -> dict:
        if self.record_path is None or not self.record_path.is_file():
            return {}
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_record(self, record: dict) -> None:
        if self.record_path is not None:
            self.record_path.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")

    def restart(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        if self.record_path is not None:
            self.record_path.unlink(missing_ok=True)

    def digest_of_staged(self) -> Any:
        """sha256 object over the bytes already staged."""
        digest = hashlib.sha256()
        self.fh.seek(0)
        for chunk in iter(lambda: self.fh.read(CHUNK), b""):
            digest.update(chunk)
        return digest

    def discard(self) -> None:
        self.fh.close()
        self.path.unlink(missing_ok=True)
        if self.record_path is not None:
            self.record_path.unlink(missing_ok=True)

    def publish(self, dest: Path) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        publish(self.path, dest)  # still locked: no other process appends meanwhile
        if self.record_path is not None:
            self.record_path.unlink(missing_ok=True)
        self.fh.close()

    def close(self) -> None:
        """Keep a resumable partial file; remove an empty or private one."""
        if self.fh.closed:
            return
        keep = self.resumable and self.size() > 0
        self.fh.close()  # also releases the lock
        if not keep:
            self.path.unlink(missing_ok=True)
            if self.record_path is not None:
                self.record_path.unlink(missing_ok=True)


def _open(url: str, headers: dict[str, str], timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    return urllib.request.urlopen(request, timeout=timeout)


def _status(resp: Any) -> int:
    return int(getattr(resp, "status", None) or 200)  # file:// responses have no status


def _length(resp: Any) -> int | None:
    value = resp.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _response(url: str, stage: _Staging, sha256: str | None, timeout: float) -> tuple[Any, int, int | None]:
    """Open ``url``, resuming the staged bytes when allowed; returns ``(response, offset, total)``
    with the staging file holding exactly ``offset`` bytes of the file."""
    offset, rec = stage.size(), stage.record()
    validator = rec.get("etag") or rec.get("last_modified")
    if offset and not (rec.get("url") == url and (sha256 is not None or validator)):
        logger.info("%s: %d staged bytes cannot be trusted for %s; restarting", stage.path, offset, url)
        stage.restart()
        offset = 0
    if offset:
        headers = {"Range": f"bytes={offset}-", **({"If-Range": validator} if validator else {})}
        try:
            resp = _open(url, headers, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:
                raise
            logger.info("%s: range %d- not satisfiable; restarting", url, offset)
            resp = None
        if resp is not None and _status(resp) == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                total = None if match.group(3) == "*" else int(match.group(3))
                logger.info("resuming %s at byte %d", url, offset)
                return resp, offset, total
            resp.close()
            resp = None
        if resp is not None:  # 200: the whole file (range ignored, or If-Range failed)
            logger.info("%s: the server sent the whole file; restarting from byte 0", url)
            stage.restart()
            return resp, 0, _length(resp)
        stage.restart()
    resp = _open(url, {}, timeout)
    return resp, 0, _length(resp)


def fetch(url: str, dest: Path, sha256: str | None, *, timeout: float, size: int | None,
          progress: Callable[[int | None, int, str], Any] | None = None) -> None:
    """Download ``url`` into ``dest`` through its staging file (module docstring).

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: final path (its folder exists).
        sha256: expected lower-case hex digest of the whole file, or None (unknown: an
            authors' file on first download).
        timeout: socket timeout in seconds.
        size: expected size in bytes, or None.
        progress: ``(total, initial, name) -> bar`` with ``update(n)`` and ``close()``, or None.
    Raises:
        Failed: the attempt failed (why in the message; a cut-off transfer keeps its staged
            bytes for the next attempt; a wrong sha256 deletes them).
        urllib.error.HTTPError / URLError, http.client.HTTPException, OSError: network errors
            (the caller reports them; staged bytes are kept).
    """
    stage = _Staging(dest)
    try:
        resp, offset, total = _response(url, stage, sha256, timeout)
        with resp:
            if total is not None and size is not None and total != size:
                stage.discard()
                raise Failed(f"server announces {total} bytes, the card says {size}")
            stage.write_record({"url": url, "etag": resp.headers.get("ETag"),
                                "last_modified": resp.headers.get("Last-Modified"), "total": total})
            digest = stage.digest_of_staged()
            stage.fh.seek(offset)
            stage.fh.truncate()
            received = offset
            bar = progress(total, offset, dest.name) if progress else None
            try:
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    stage.fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        kept = f"; the {received} bytes received are kept in {stage.path} and the next attempt resumes" \
            if stage.resumable else ""
        if total is not None and received != total:
            raise Failed(f"transfer interrupted: received {received} of {total} bytes (Content-Length){kept}")
        if size is not None and received != size:
            stage.discard()
            raise Failed(f"received {received} bytes, the card says {size}")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            stage.discard()
            raise Failed(f"sha256 mismatch: got {actual}, expected {sha256} ({received} bytes received)")
        stage.publish(dest)
    finally:
        stage.close()
