"""Shared fixtures. Real scans come from ``../shared/data`` (or ``$ZOO_SHARED_DATA``); tests
that need them are marked ``realdata`` and skip with a reason when the folder is absent."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite runs the Keras backend unless ZOO_BACKEND says otherwise: with every test's own
# empty ZOO_HOME, the card default (wmh_ensemble: auto = onnxruntime) would convert the members
# to ONNX again in each test. The ONNX path and the default's resolution have their own tests
# (test_onnx.py); ZOO_BACKEND=auto runs the whole suite on the default path.
os.environ.setdefault("ZOO_BACKEND", "keras")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ZOO_SHARED_DATA", REPO.parent / "shared" / "data"))


def axial_slab(img, k0: int, k1: int):
    """Axial slices ``k0:k1`` (voxel axis k) of a nibabel image as a new image whose affine
    places them where they were, with the source header and its qform/sform codes."""
    import nibabel as nib
    import numpy as np

    aff = img.affine.copy()
    aff[:3, 3] = img.affine[:3, :3] @ [0, 0, k0] + img.affine[:3, 3]
    out = nib.Nifti1Image(np.asarray(img.dataobj)[:, :, k0:k1], aff, img.header.copy())
    out.header.set_qform(aff, code=int(img.header["qform_code"]))
    out.header.set_sform(aff, code=int(img.header["sform_code"]))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-scan folder; skips the test when it is absent (e.g. a user's fresh clone)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real scans not found at {SHARED_DATA} (set ZOO_SHARED_DATA to run this test)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_zoo_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty weights cache so nothing leaks between tests."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))


class Server:
    """A local HTTP server; ``routes`` maps a path to ``(mode, body)``.

    Modes: ``"ok"`` (supports ``Range: bytes=N-`` with ``206`` and ``If-Range`` against the
    body's ETag), ``"404"``, ``"truncated"`` (announces 1000 bytes more than the body and sends
    half of it), ``"cut"`` (announces the right length, sends the first half of what was asked,
    then closes: an interrupted transfer) and ``"norange"`` (ignores ``Range``: always ``200``
    with the whole body). ``requests`` lists the paths asked for, ``headers`` the request
    headers of each (a dict per request)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                server.requests.append(self.path)
                server.headers.append(dict(self.headers.items()))
                mode, body = server.routes.get(self.path, ("404", b""))
                if mode == "404":
                    self.send_error(404, "Not Found")
                    return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                start = 0
                wanted = self.headers.get("Range", "")
                if_range = self.headers.get("If-Range")
                if mode in ("ok", "cut") and wanted.startswith("bytes=") and wanted.endswith("-") \
                        and (if_range is None or if_range == etag):
                    start = int(wanted[len("bytes="):-1])
                part = body[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", etag)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                if mode in ("truncated", "cut"):
                    extra = 1000 if mode == "truncated" else 0
                    self.send_header("Content-Length", str(len(part) + extra))
                    self.end_headers()
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                self.wfile.write(part)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()
