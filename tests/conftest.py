"""Shared fixtures. Real scans come from ``../shared/data`` (or ``$ZOO_SHARED_DATA``); tests
that need them are marked ``realdata`` and skip with a reason when the folder is absent."""

from __future__ import annotations

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
    """A local HTTP server; ``routes`` maps a path to ("ok" | "404" | "truncated", body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                server.requests.append(self.path)
                mode, body = server.routes.get(self.path, ("404", b""))
                if mode == "404":
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode == "truncated":
                    self.send_header("Content-Length", str(len(body) + 1000))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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
