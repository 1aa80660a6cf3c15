"""Tests of zoo.weights: storage format, checksums, resolution order, downloads, converter.

Everything is local and fast: tiny Functional models, files in tmp_path, and an HTTP server on
127.0.0.1 in a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from zoo import weights
from zoo.errors import ChecksumError, DownloadError, WeightsError, WeightsNotAvailableError

REL = "tiny_entry/default/member0.npz"


# --- helpers and fixtures --------------------------------------------------------------------
def tiny_model(extra: bool = False, c1_filters: int = 4, with_c2: bool = True) -> keras.Model:
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(c1_filters, 3, name="c1")(inputs)
    if with_c2:
        x = keras.layers.Conv2D(1, 1, name="c2")(x)
    if extra:
        x = keras.layers.Conv2D(1, 1, name="c3")(x)
    return keras.Model(inputs, x)


def randomise(model: keras.Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {}
    for variable in model.weights:
        value = rng.normal(size=tuple(variable.shape)).astype("float32")
        variable.assign(value)
        values[variable.path] = value
    return values


def current(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def record(data: bytes, rel: str = REL, urls: list[str] | None = None) -> dict:
    rec = {"file": rel, "sha256": sha_bytes(data), "size": len(data)}
    if urls is not None:
        rec["urls"] = urls
    return rec


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache and bundled folder inside tmp_path; no proxies for the local HTTP server."""
    home = tmp_path / "env" / "home"
    bundled = tmp_path / "env" / "bundled"
    bundled.mkdir(parents=True)
    monkeypatch.setenv("ZOO_HOME", str(home))
    monkeypatch.setattr(weights, "_bundled_root", lambda: bundled)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    return {"home": home, "cache": home / "weights", "bundled": bundled}


PAYLOAD = b"zoo weights payload " * 5000  # 100 kB


# --- storage format ----------------------------------------------------------------------------
def test_round_trip_float16(tmp_path):
    model = tiny_model()
    original = randomise(model)
    path = tmp_path / "m.npz"
    digest = weights.save_weights(model, path)
    assert digest == weights.sha256_file(path) == sha_bytes(path.read_bytes())
    assert sorted(os.listdir(tmp_path)) == ["env", "m.npz"]  # no temp file left

    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([*original, "__meta__"])
        assert all(npz[k].dtype == np.float16 for k in original)
        meta = json.loads(npz["__meta__"].tobytes().decode())
        assert npz["__meta__"].dtype == np.uint8
    assert meta["format_version"] == weights.FORMAT_VERSION
    assert meta["keras_version"] == keras.__version__
    assert meta["n_params"] == sum(v.size for v in original.values()) == model.count_params()

    fresh = tiny_model()
    returned = weights.load_weights(fresh, path, sha256=digest.upper())
    assert returned["n_params"] == meta["n_params"]
    for variable in fresh.weights:
        loaded = np.asarray(variable.numpy())
        assert loaded.dtype == np.float32
        expected = original[variable.path].astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(loaded, expected)
        assert not np.array_equal(loaded, original[variable.path])  # really rounded


def test_save_float16_overflow_is_refused(tmp_path):
    model = tiny_model()
    model.get_layer("c1").kernel.assign(np.full((3, 3, 2, 4), 1e6, "float32"))
    with pytest.raises(WeightsError, match="c1/kernel.*float16"):
        weights.save_weights(model, tmp_path / "m.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["env"]


def test_wrong_sha256_raises_and_leaves_model_unchanged(tmp_path):
    source = tiny_model()
    randomise(source, seed=1)
    path = tmp_path / "m.npz"
    actual = weights.save_weights(source, path)
    target = tiny_model()
    randomise(target, seed=2)
    before = current(target)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        weights.load_weights(target, path, sha256=wrong)
    message = str(info.value)
    assert str(path) in message and wrong in message and actual in message
    assert "fetch it again" in message
    after = current(target)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "target, needle",
    [
        (lambda: tiny_model(extra=True), "missing from the file.*c3/kernel"),
        (lambda: tiny_model(with_c2=False), "match no model variable.*c2/kernel"),
        (lambda: tiny_model(c1_filters=5, with_c2=False), "c1/kernel"),
    ],
    ids=["missing", "unused", "shape"],
)
def test_mismatching_model_raises(tmp_path, target, needle):
    source = tiny_model()
    randomise(source)
    path = tmp_path / "m.npz"
    weights.save_weights(source, path)
    model = target()
    before = current(model)
    with pytest.raises(WeightsError, match=needle) as info:
        weights.load_weights(model, path)
    assert str(path) in str(info.value)
    after = current(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_shape_mismatch_names_both_shapes(tmp_path):
    source = tiny_model()
    path = tmp_path / "m.npz"
    weights.save_weights(source, path)
    with pytest.raises(WeightsError, match=r"c2/kernel: file \(1, 1, 4, 1\), model \(1, 1, 5, 1\)"):
        weights.load_weights(tiny_model(c1_filters=5), path)


class _Mkdir:
    """Unpickling this object would create a folder: proof that code was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_load_never_unpickles(tmp_path, monkeypatch):
    marker = tmp_path / "code_was_executed"
    meta_json = json.dumps({"format": "zoo-weights", "format_version": 1})
    meta = np.frombuffer(meta_json.encode(), np.uint8)
    path = tmp_path / "evil.npz"
    np.savez(path, **{"c1/kernel": np.array([_Mkdir(marker)], dtype=object), "__meta__": meta})

    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    with pytest.raises(WeightsError, match="never unpickled"):
        weights.load_weights(tiny_model(), path)
    assert calls and all(c.get("allow_pickle") is False for c in calls)
    assert not marker.exists()
    monkeypatch.undo()
    # the file really is malicious: a pickle-enabled loader would have run the code
    with real_load(path, allow_pickle=True) as npz:
        npz["c1/kernel"]
    assert marker.exists()


def test_unreadable_or_foreign_files(tmp_path):
    garbage = put(tmp_path / "garbage.npz", b"not a zip file at all")
    with pytest.raises(WeightsError, match="garbage.npz"):
        weights.load_weights(tiny_model(), garbage)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, **{"c1/kernel": np.zeros((3, 3, 2, 4))})
    with pytest.raises(WeightsError, match="__meta__"):
        weights.load_weights(tiny_model(), foreign)
    with pytest.raises(WeightsNotAvailableError, match="nope.npz"):
        weights.load_weights(tiny_model(), tmp_path / "nope.npz")


# --- resolution ------------------------------------------------------------------------------
def test_resolution_order_explicit_cache_bundled(tmp_path, isolated):
    rec = record(PAYLOAD)
    explicit = put(tmp_path / "mine" / "member0.npz", PAYLOAD)
    cached = put(isolated["cache"] / REL, PAYLOAD)
    bundled = put(isolated["bundled"] / REL, PAYLOAD)

    assert weights.resolve([rec], "tiny_entry", "default", explicit=tmp_path / "mine") == [explicit]
    assert weights.resolve([rec], "tiny_entry", "default", explicit=str(explicit)) == [explicit]
    assert weights.resolve([rec], "tiny_entry", "default") == [cached]
    cached.unlink()
    assert weights.resolve([rec], "tiny_entry", "default") == [bundled]


def test_weights_dir_env_comes_after_explicit_and_before_cache(tmp_path, isolated, monkeypatch):
    """$ZOO_WEIGHTS_DIR (laid out like the repository's weights/): how a wheel finds weights."""
    rec = record(PAYLOAD)
    folder = tmp_path / "wdir"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    with pytest.raises(WeightsNotAvailableError, match=f"ZOO_WEIGHTS_DIR {folder / REL}"):
        weights.resolve([rec], "tiny_entry", "default")
    in_dir = put(folder / REL, PAYLOAD)
    cached = put(isolated["cache"] / REL, PAYLOAD)
    explicit = put(tmp_path / "mine" / "member0.npz", PAYLOAD)
    assert weights.resolve([rec], "tiny_entry", "default") == [in_dir]
    assert weights.resolve([rec], "tiny_entry", "default", explicit=explicit) == [explicit]
    in_dir.write_bytes(PAYLOAD + b"!")  # a wrong file there is an error, not skipped
    with pytest.raises(ChecksumError, match=str(in_dir)):
        weights.resolve([rec], "tiny_entry", "default")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, "")
    assert weights.resolve([rec], "tiny_entry", "default") == [cached]


def test_resolve_several_members_keeps_order(tmp_path, isolated):
    data = [PAYLOAD + bytes([i]) for i in range(3)]
    recs = [record(d, rel=f"tiny_entry/default/member{i}.npz") for i, d in enumerate(data)]
    put(tmp_path / "mine" / "member1.npz", data[1])
    put(isolated["cache"] / recs[0]["file"], data[0])
    put(isolated["bundled"] / recs[2]["file"], data[2])
    found = weights.resolve(recs, "tiny_entry", "default", explicit=tmp_path / "mine")
    assert found == [
        isolated["cache"] / recs[0]["file"],
        tmp_path / "mine" / "member1.npz",
        isolated["bundled"] / recs[2]["file"],
    ]
    with pytest.raises(WeightsError, match="single file.*3 ensemble members"):
        weights.resolve(recs, "tiny_entry", "default", explicit=tmp_path / "mine" / "member1.npz")


def test_resolve_checks_sha256(tmp_path, isolated):
    rec = record(PAYLOAD)
    wrong = put(tmp_path / "mine" / "member0.npz", PAYLOAD + b"!")
    with pytest.raises(ChecksumError) as info:
        weights.resolve([rec], "tiny_entry", "default", explicit=wrong)
    assert str(wrong) in str(info.value) and rec["sha256"] in str(info.value)
    # a corrupt cached file is skipped (with a warning) in favour of a good bundled one
    put(isolated["cache"] / REL, PAYLOAD + b"!")
    bundled = put(isolated["bundled"] / REL, PAYLOAD)
    assert weights.resolve([rec], "tiny_entry", "default") == [bundled]
    bundled.write_bytes(PAYLOAD + b"?")
    with pytest.raises(ChecksumError, match="bundled"):
        weights.resolve([rec], "tiny_entry", "default")


def test_explicit_path_must_exist(tmp_path):
    with pytest.raises(WeightsNotAvailableError, match="does not exist"):
        weights.resolve([record(PAYLOAD)], "tiny_entry", "default", explicit=tmp_path / "typo")


def test_nothing_found_lists_places(tmp_path, isolated):
    with pytest.raises(WeightsNotAvailableError) as info:
        weights.resolve([record(PAYLOAD)], "tiny_entry", "default", explicit=tmp_path)
    message = str(info.value)
    assert "tiny_entry" in message and "default" in message
    assert f"explicit folder {tmp_path}" in message
    assert str(isolated["cache"] / REL) in message
    assert str(isolated["bundled"] / REL) in message
    assert "card lists none" in message
    assert "weights=None" in message and "weights=" in message


def test_malformed_record():
    with pytest.raises(WeightsError, match="sha256"):
        weights.resolve([{"file": REL, "sha256": "abc"}], "tiny_entry", "default")
    with pytest.raises(WeightsError, match="relative"):
        weights.resolve([{"file": "../x.npz", "sha256": "0" * 64}], "tiny_entry", "default")


def test_resolve_downloads_card_urls_into_cache(server, isolated):
    server.routes["/a/member0.npz"] = ("ok", PAYLOAD)
    rec = record(PAYLOAD, urls=[server.url + "/missing/member0.npz", server.url + "/a/member0.npz"])
    found = weights.resolve([rec], "tiny_entry", "default")
    assert found == [isolated["cache"] / REL]
    assert found[0].read_bytes() == PAYLOAD
    n = len(server.requests)
    assert weights.resolve([rec], "tiny_entry", "default") == found  # now from the cache
    assert len(server.requests) == n


def test_resolve_explicit_url_prefix(server, isolated):
    server.routes["/mirror/member0.npz"] = ("ok", PAYLOAD)
    prefix = server.url + "/mirror/"
    found = weights.resolve([record(PAYLOAD)], "tiny_entry", "default", explicit=prefix)
    assert found == [isolated["cache"] / REL] and found[0].read_bytes() == PAYLOAD
    assert server.requests == ["/mirror/member0.npz"]


def test_resolve_failed_downloads_are_listed(server):
    rec = record(PAYLOAD, urls=[server.url + "/gone.npz"])
    with pytest.raises(WeightsNotAvailableError, match=r"gone\.npz: HTTP 404"):
        weights.resolve([rec], "tiny_entry", "default")


# --- download ------------------------------------------------------------------------------
def test_download_http_and_file_urls(server, tmp_path):
    server.routes["/w.npz"] = ("ok", PAYLOAD)
    dest = tmp_path / "dl" / "w.npz"
    assert weights.download(server.url + "/w.npz", dest, sha_bytes(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == ["w.npz"]
    dest2 = tmp_path / "dl2" / "w.npz"
    weights.download(dest.as_uri(), dest2, sha_bytes(PAYLOAD), size=len(PAYLOAD))
    assert dest2.read_bytes() == PAYLOAD


def test_download_wrong_sha256_leaves_nothing(server, tmp_path):
    server.routes["/w.npz"] = ("ok", PAYLOAD)
    folder = tmp_path / "dl"
    wrong = "f" * 64
    with pytest.raises(ChecksumError) as info:
        weights.download(server.url + "/w.npz", folder / "w.npz", wrong)
    assert server.url + "/w.npz" in str(info.value) and wrong in str(info.value)
    assert sha_bytes(PAYLOAD) in str(info.value)
    assert list(folder.iterdir()) == []


def test_download_interrupted_transfer_leaves_nothing(server, tmp_path):
    server.routes["/w.npz"] = ("truncated", PAYLOAD)
    folder = tmp_path / "dl"
    with pytest.raises(DownloadError, match="interrupted") as info:
        weights.download(server.url + "/w.npz", folder / "w.npz", sha_bytes(PAYLOAD))
    assert not isinstance(info.value, ChecksumError)
    assert server.url + "/w.npz" in str(info.value)
    # nothing at the final path; the bytes received wait in the hidden staging file (resumable)
    assert sorted(p.name for p in folder.iterdir()) == [".w.npz.part", ".w.npz.part.json"]


def test_download_mirrors(server, tmp_path):
    server.routes["/second/w.npz"] = ("ok", PAYLOAD)
    urls = [server.url + "/first/w.npz", server.url + "/second/w.npz"]
    dest = weights.download(urls, tmp_path / "w.npz", sha_bytes(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["/first/w.npz", "/second/w.npz"]

    server.routes["/third/w.npz"] = ("truncated", PAYLOAD)
    bad = [server.url + "/first/w.npz", server.url + "/third/w.npz", "ftp://example.org/w.npz"]
    with pytest.raises(DownloadError) as info:
        weights.download(bad, tmp_path / "other" / "w.npz", sha_bytes(PAYLOAD))
    message = str(info.value)
    assert all(url in message for url in bad)
    assert "HTTP 404" in message and "interrupted" in message and "scheme" in message
    assert not (tmp_path / "other" / "w.npz").exists()
    assert all(p.name.startswith(".w.npz.part") for p in (tmp_path / "other").iterdir())


def test_download_connection_refused(tmp_path):
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot connect"):
        weights.download(f"http://127.0.0.1:{port}/w.npz", tmp_path / "w.npz", "0" * 64, timeout=5)
    assert [p.name for p in tmp_path.iterdir()] == ["env"]


# --- read-only cache ---------------------------------------------------------------------------
def _read_only_setup(server, isolated, tmp_path, monkeypatch):
    present = PAYLOAD + b"present"
    put(isolated["cache"] / "tiny_entry/default/member0.npz", present)
    server.routes["/member1.npz"] = ("ok", PAYLOAD)
    recs = [
        record(present, rel="tiny_entry/default/member0.npz"),
        record(PAYLOAD, rel="tiny_entry/default/member1.npz", urls=[server.url + "/member1.npz"]),
    ]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return recs, scratch


def _check_read_only(found, isolated, scratch, caplog):
    assert found[0] == isolated["cache"] / "tiny_entry/default/member0.npz"  # used as it is
    assert found[1].is_relative_to(scratch) and found[1].read_bytes() == PAYLOAD
    assert not (isolated["cache"] / "tiny_entry/default/member1.npz").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not writable" in message for message in warnings)


def test_read_only_cache_chmod(server, isolated, tmp_path, monkeypatch, caplog):
    recs, scratch = _read_only_setup(server, isolated, tmp_path, monkeypatch)
    cache = isolated["cache"]
    folders = [cache / "tiny_entry/default", cache / "tiny_entry", cache]
    for folder in folders:
        folder.chmod(0o555)
    try:
        if os.access(folders[0], os.W_OK):
            pytest.skip("chmod does not make folders read-only for this user (root)")
        with caplog.at_level(logging.WARNING, logger="zoo.weights"):
            found = weights.resolve(recs, "tiny_entry", "default")
        _check_read_only(found, isolated, scratch, caplog)
    finally:
        for folder in folders:
            folder.chmod(0o755)


def test_read_only_cache_hook(server, isolated, tmp_path, monkeypatch, caplog):
    """The same, with the writability check patched (chmod is ineffective as root)."""
    recs, scratch = _read_only_setup(server, isolated, tmp_path, monkeypatch)
    monkeypatch.setattr(weights, "is_writable_dir", lambda folder: False)
    with caplog.at_level(logging.WARNING, logger="zoo.weights"):
        found = weights.resolve(recs, "tiny_entry", "default")
    _check_read_only(found, isolated, scratch, caplog)


# --- Keras 2 converter -------------------------------------------------------------------------
def legacy_model() -> keras.Model:
    inputs = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(4, 3, name="enc_conv")(inputs)
    x = keras.layers.BatchNormalization(name="enc_bn")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(1, 1, name="head")(x)
    return keras.Model(inputs, x)


def legacy_layers(seed: int = 0) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return rng.normal(size=shape).astype("float32")

    bn = "batch_normalization_1"
    bn_names = ("gamma", "beta", "moving_mean", "moving_variance")
    return [
        ("input_1", []),
        ("conv2d_1", [("conv2d_1/kernel:0", arr(3, 3, 2, 4)), ("conv2d_1/bias:0", arr(4))]),
        (bn, [(f"{bn}/{n}:0", arr(4)) for n in bn_names]),
        ("max_pooling2d_1", []),
        ("conv2d_2", [("conv2d_2/kernel:0", arr(1, 1, 4, 1)), ("conv2d_2/bias:0", arr(1))]),
    ]


def write_keras2_h5(path: Path, layers, full_model: bool = False) -> Path:
    """Write the layout of Keras 2 ``save_weights`` (or of a full-model file)."""
    with h5py.File(path, "w") as fh:
        root = fh.create_group("model_weights") if full_model else fh
        root.attrs["layer_names"] = np.asarray([name.encode() for name, _ in layers])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.4.0"
        for name, layer_weights in layers:
            group = root.create_group(name)
            # Keras 2 stores np.asarray([]) (float64) for weightless layers
            group.attrs["weight_names"] = np.asarray([w.encode() for w, _ in layer_weights])
            for weight_name, value in layer_weights:
                group.create_dataset(weight_name, data=value)
    return path


EXPECTED_MAP = {
    "enc_conv/kernel": "conv2d_1/kernel:0",
    "enc_conv/bias": "conv2d_1/bias:0",
    "enc_bn/gamma": "batch_normalization_1/gamma:0",
    "enc_bn/beta": "batch_normalization_1/beta:0",
    "enc_bn/moving_mean": "batch_normalization_1/moving_mean:0",
    "enc_bn/moving_variance": "batch_normalization_1/moving_variance:0",
    "head/kernel": "conv2d_2/kernel:0",
    "head/bias": "conv2d_2/bias:0",
}


@pytest.mark.parametrize("full_model", [False, True], ids=["weights_file", "full_model_file"])
def test_convert_keras2_h5(tmp_path, full_model):
    layers = legacy_layers()
    legacy = {w: v for _, ws in layers for w, v in ws}
    h5 = write_keras2_h5(tmp_path / "upstream.h5", layers, full_model=full_model)
    model = legacy_model()
    out = tmp_path / "out" / "member0.npz"
    digest = weights.convert_keras2_h5(model, h5, out)
    assert digest == weights.sha256_file(out)
    values = current(model)
    assert sorted(values) == sorted(EXPECTED_MAP)
    for path, legacy_name in EXPECTED_MAP.items():
        np.testing.assert_array_equal(values[path], legacy[legacy_name])
    fresh = legacy_model()
    weights.load_weights(fresh, out, sha256=digest)
    for path, value in current(fresh).items():
        expected = legacy[EXPECTED_MAP[path]].astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(value, expected)


def test_convert_matches_by_name_within_a_layer(tmp_path):
    layers = legacy_layers()
    layers[1] = ("conv2d_1", layers[1][1][::-1])  # bias listed before kernel
    legacy = {w: v for _, ws in layers for w, v in ws}
    model = legacy_model()
    weights.convert_keras2_h5(model, write_keras2_h5(tmp_path / "u.h5", layers), tmp_path / "o.npz")
    np.testing.assert_array_equal(current(model)["enc_conv/kernel"], legacy["conv2d_1/kernel:0"])


def _extra_layer(layers):
    return layers + [("conv2d_3", [("conv2d_3/kernel:0", np.zeros((1, 1, 1, 1), "float32"))])]


def _extra_weight(layers):
    name, ws = layers[4]
    layers[4] = (name, ws + [("conv2d_2/extra:0", np.zeros(1, "float32"))])
    return layers


def _wrong_shape(layers):
    layers[1] = ("conv2d_1", [("conv2d_1/kernel:0", np.zeros((5, 5, 2, 4), "float32")),
                              layers[1][1][1]])
    return layers


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (_extra_layer, "has 4 layers with weights, the model has 3"),
        (_extra_weight, "conv2d_2.*3 weights.*'head'"),
        (_wrong_shape, r"conv2d_1/kernel:0.*\(5, 5, 2, 4\).*enc_conv/kernel.*\(3, 3, 2, 4\)"),
    ],
    ids=["extra_layer", "extra_weight", "wrong_shape"],
)
def test_convert_rejects_mismatches(tmp_path, mutate, needle):
    h5 = write_keras2_h5(tmp_path / "u.h5", mutate(legacy_layers()))
    model = legacy_model()
    before = current(model)
    out = tmp_path / "o.npz"
    with pytest.raises(WeightsError, match=needle) as info:
        weights.convert_keras2_h5(model, h5, out)
    assert str(h5) in str(info.value)
    assert not out.exists()
    after = current(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_convert_rejects_non_keras_files(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh.create_dataset("data", data=np.zeros(3))
    with pytest.raises(WeightsError, match="layer_names"):
        weights.convert_keras2_h5(legacy_model(), tmp_path / "x.h5", tmp_path / "o.npz")
    put(tmp_path / "y.h5", b"not hdf5")
    with pytest.raises(WeightsError, match="y.h5"):
        weights.convert_keras2_h5(legacy_model(), tmp_path / "y.h5", tmp_path / "o.npz")


def test_convert_files_gives_card_records(tmp_path):
    h5s = [write_keras2_h5(tmp_path / f"up{i}.h5", legacy_layers(seed=i)) for i in range(2)]
    out_dir = tmp_path / "converted"
    records = weights.convert_keras2_h5_files(
        legacy_model, h5s, out_dir, file_prefix="tiny_entry/default"
    )
    assert [r["file"] for r in records] == [f"tiny_entry/default/member{i}.npz" for i in range(2)]
    for i, rec in enumerate(records):
        local = out_dir / f"member{i}.npz"
        assert rec["sha256"] == weights.sha256_file(local)
        assert rec["size"] == local.stat().st_size
    # the records resolve from the output folder and load with their checksums
    found = weights.resolve(records, "tiny_entry", "default", explicit=out_dir)
    assert found == [out_dir / "member0.npz", out_dir / "member1.npz"]
    model = legacy_model()
    weights.load_weights(model, found[1], sha256=records[1]["sha256"])
    expected = legacy_layers(seed=1)[1][1][0][1].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(current(model)["enc_conv/kernel"], expected)
