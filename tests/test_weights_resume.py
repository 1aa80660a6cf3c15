"""Resumable downloads (:func:`zoo.weights.download` through :mod:`zoo.transfer`) against the
local HTTP server of conftest: a cut-off transfer leaves nothing at the final path, only the hidden
staging file; the next call resumes it with ``Range`` and ends with the right sha256 over the
whole file; a server that ignores ranges, or whose file changed (``If-Range``), restarts from zero."""

from __future__ import annotations

import fcntl
import hashlib
import os

import numpy as np
import pytest

from zoo import transfer, weights
from zoo.errors import ChecksumError, DownloadError, WeightsNotAvailableError

PAYLOAD = np.random.default_rng(15).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
OTHER = PAYLOAD[::-1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)


def _cut(server, tmp_path, body=PAYLOAD, digest: str | None = sha(PAYLOAD)):
    """One interrupted attempt: returns (dest, staging file, bytes staged)."""
    server.routes["/w.npz"] = ("cut", body)
    dest = tmp_path / "dl" / "w.npz"
    with pytest.raises(DownloadError, match="interrupted.*kept in .*resumes"):
        weights.download(server.url + "/w.npz", dest, digest)
    part, record = transfer.staging_paths(dest)
    assert not dest.exists()  # never a partial file at the final path
    assert sorted(p.name for p in dest.parent.iterdir()) == [part.name, record.name]
    staged = part.read_bytes()
    assert 0 < len(staged) < len(body) and body.startswith(staged)
    return dest, part, len(staged)


def test_interrupted_download_resumes_with_range(server, tmp_path):
    dest, part, n = _cut(server, tmp_path)
    server.routes["/w.npz"] = ("ok", PAYLOAD)
    assert weights.download(server.url + "/w.npz", dest, sha(PAYLOAD)) == dest
    assert server.headers[-1]["Range"] == f"bytes={n}-"  # only the missing bytes were asked for
    assert server.headers[-1]["If-Range"].startswith('"')  # with the ETag of the first answer
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.npz"]  # staging gone


def test_resume_with_unknown_sha256_uses_the_etag(server, tmp_path):
    """An authors' file on first download (sha256 unknown): resumed because If-Range protects it."""
    dest, part, n = _cut(server, tmp_path, digest=None)
    server.routes["/w.npz"] = ("ok", PAYLOAD)
    weights.download(server.url + "/w.npz", dest, None)
    assert server.headers[-1]["Range"] == f"bytes={n}-" and dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest, part, n = _cut(server, tmp_path)
    server.routes["/w.npz"] = ("norange", PAYLOAD)
    weights.download(server.url + "/w.npz", dest, sha(PAYLOAD))
    assert server.headers[-1]["Range"] == f"bytes={n}-"  # asked, answered 200 with everything
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_changed_file_on_the_server_restarts_not_appends(server, tmp_path):
    """If-Range fails (another ETag) -> 200 -> the staged bytes of the old file are dropped."""
    dest, part, n = _cut(server, tmp_path, digest=None)
    server.routes["/w.npz"] = ("ok", OTHER)
    weights.download(server.url + "/w.npz", dest, None)
    assert "Range" in server.headers[-1]
    assert dest.read_bytes() == OTHER


def test_untrusted_staging_is_not_resumed(server, tmp_path):
    """Staged bytes of another URL, or with neither a known sha256 nor a validator, restart."""
    dest = tmp_path / "w.npz"
    part, record = transfer.staging_paths(dest)
    part.write_bytes(OTHER[:1000])
    record.write_text('{"url": "%s/w.npz", "etag": null, "last_modified": null}' % server.url)
    server.routes["/w.npz"] = ("ok", PAYLOAD)
    weights.download(server.url + "/w.npz", dest, None)
    assert "Range" not in server.headers[-1] and dest.read_bytes() == PAYLOAD


def test_wrong_sha256_after_resume_deletes_the_staged_bytes(server, tmp_path):
    dest, part, n = _cut(server, tmp_path)
    server.routes["/w.npz"] = ("ok", PAYLOAD)
    wrong = "e" * 64
    with pytest.raises(ChecksumError, match=sha(PAYLOAD)):
        weights.download(server.url + "/w.npz", dest, wrong)
    assert server.headers[-1]["Range"] == f"bytes={n}-"  # the whole file was hashed, not the tail
    assert list(dest.parent.iterdir()) == []


def test_staging_file_is_never_used_as_weights(tmp_path, monkeypatch):
    """Even a complete staging file in the cache is not a weights file."""
    rel = "tiny_entry/default/member0.npz"
    cached = weights.cache_dir() / rel
    cached.parent.mkdir(parents=True)
    part, _ = transfer.staging_paths(cached)
    part.write_bytes(PAYLOAD)
    rec = {"file": rel, "sha256": sha(PAYLOAD), "size": len(PAYLOAD)}
    with pytest.raises(WeightsNotAvailableError, match="not found"):
        weights.resolve([rec], "tiny_entry", "default")


def test_a_locked_staging_file_is_left_to_its_owner(server, tmp_path):
    """Another process downloading the same file holds the lock: this one uses a private file."""
    dest, part, n = _cut(server, tmp_path)
    fd = os.open(part, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        server.routes["/w.npz"] = ("ok", PAYLOAD)
        weights.download(server.url + "/w.npz", dest, sha(PAYLOAD))
        assert "Range" not in server.headers[-1]
        assert dest.read_bytes() == PAYLOAD and part.stat().st_size == n  # owner's bytes untouched
    finally:
        os.close(fd)
