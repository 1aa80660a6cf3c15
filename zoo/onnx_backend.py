"""ONNX export of an entry's Keras members and an onnxruntime backend for :class:`~zoo.model.ZooModel`.

    zoo export wmh_ensemble --variant flair --format onnx -o wmh.onnx   # CLI
    model = zoo.load("wmh_ensemble", variant="flair", backend="onnx")    # API

Each Keras member is converted with tf2onnx (a ``tf.function`` over a named, batch-dynamic
``tf.TensorSpec`` signature; float32 in, float32 out). The graph's inputs keep the Keras input
names (``image``, ``ct_crop``, ``sources`` + ``condition``...), its single output is named
``output``. :class:`OnnxMember` wraps an onnxruntime session behind the calls the entries make
on a Keras member (``member(x, training=False)``, ``predict_on_batch``, ``predict``), so every
entry's ``predict`` flow runs unchanged on either backend.

``tf2onnx`` and ``onnxruntime`` are dependencies of the package (``wmh_ensemble`` runs on
onnxruntime by default); where they are missing anyway, :func:`require` raises
:class:`~zoo.errors.BackendError` naming the fix and ``backend="auto"`` falls back to Keras.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from zoo import errors

#: ONNX opset of exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 17
#: Name of the single output of every exported graph.
OUTPUT_NAME = "output"
BACKENDS = ("keras", "onnx")

log = logging.getLogger(__name__)


def available() -> bool:
    """True when both ``tf2onnx`` and ``onnxruntime`` can be imported."""
    try:
        require()
    except errors.BackendError:
        return False
    return True


def require() -> None:
    """Raise :class:`~zoo.errors.BackendError` unless tf2onnx and onnxruntime are installed."""
    missing = []
    for mod in ("tf2onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise errors.BackendError(
            f"the ONNX backend needs {' and '.join(missing)}, which are not installed; "
            "they are dependencies of the zoo; reinstall it (pip install -e .) or run: "
            f"pip install {' '.join(missing)}")


def input_names(model: Any) -> list[str]:
    """The Keras input names of ``model`` in ``model.inputs`` order (the ONNX input names)."""
    return [str(t.name).split(":")[0] for t in model.inputs]


def to_onnx(model: Any, path: str | os.PathLike | None = None, opset: int = OPSET):
    """Convert one Keras model to an ONNX graph.

    Args:
        model: a Functional ``keras.Model`` (one input, or several named inputs as diamondgan's
            ``sources``/``condition``), inputs ``(B, ...)`` of any batch size.
        path: where to write the ``.onnx`` file atomically (temporary file + rename); ``None``
            writes nothing.
        opset: ONNX opset.
    Returns:
        ``onnx.ModelProto``: float32 inputs named as the Keras inputs with a dynamic batch axis,
        one float32 output named :data:`OUTPUT_NAME`.
    Raises:
        BackendError: tf2onnx/onnxruntime missing, or the conversion failed.
    """
    require()
    import tensorflow as tf
    import tf2onnx

    names = input_names(model)
    specs = [tf.TensorSpec((None, *[int(d) for d in t.shape[1:]]), tf.float32, name=n)
             for t, n in zip(model.inputs, names)]

    @tf.function(input_signature=specs)
    def serve(*args):
        x = args[0] if len(args) == 1 else dict(zip(names, args))
        y = model(x, training=False)
        return {OUTPUT_NAME: tf.cast(y, tf.float32)}

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset)
    except Exception as exc:  # tf2onnx raises many types; the message is what matters
        raise errors.BackendError(f"ONNX conversion of {model.name} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
    proto = _rename_output(proto)
    if path is not None:
        write_model(proto, path)
    return proto


def _rename_output(proto):
    """Give the graph's single output the name :data:`OUTPUT_NAME` (tf2onnx suffixes ``:0``)
    and its inputs' and output's first (dynamic) axis the name ``batch``."""
    graph = proto.graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_value:
            dims[0].dim_param = "batch"
    if len(graph.output) != 1 or graph.output[0].name == OUTPUT_NAME:
        return proto
    old = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = OUTPUT_NAME
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = OUTPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    return proto


def write_model(proto, path: str | os.PathLike) -> Path:
    """Write an ``onnx.ModelProto`` atomically (temporary file in the same folder, then rename)."""
    from zoo.io import staged_file

    dest = Path(path)
    with staged_file(dest) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return dest


class OnnxMember:
    """One exported member run by onnxruntime, called like the Keras member it replaces.

    Args:
        model: an ``onnx.ModelProto``, its serialised bytes, or a path to a ``.onnx`` file.
        name: the member's name (``member0``...).
        threads: intra-op threads (``None``: onnxruntime's default, all cores; env
            ``ZOO_ONNX_THREADS`` overrides).
    Calls:
        ``member(x, training=False)``, ``member.predict_on_batch(x)`` and
        ``member.predict(x, batch_size=32)`` take a float32 ``(B, ...)`` array, or a mapping
        input name -> array for multi-input graphs, and return the float32 output as a numpy
        array of the Keras member's output shape.
    """

    def __init__(self, model: Any, name: str = "member", threads: int | None = None):
        require()
        import onnxruntime as ort

        if hasattr(model, "SerializeToString"):
            model = model.SerializeToString()
        elif isinstance(model, (str, os.PathLike)):
            model = str(model)
        opts = ort.SessionOptions()
        threads = int(os.environ.get("ZOO_ONNX_THREADS", threads or 0))
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.name = name

    def __repr__(self) -> str:
        return f"<OnnxMember {self.name} inputs={self.input_names}>"

    def _feed(self, x: Any) -> dict[str, np.ndarray]:
        if isinstance(x, Mapping):
            missing = [n for n in self.input_names if n not in x]
            if missing:
                raise ValueError(f"{self.name}: missing ONNX inputs {missing} (it takes {self.input_names})")
            return {n: np.ascontiguousarray(x[n], dtype=np.float32) for n in self.input_names}
        if len(self.input_names) != 1:
            raise ValueError(f"{self.name} takes named inputs {self.input_names}; pass a mapping")
        return {self.input_names[0]: np.ascontiguousarray(x, dtype=np.float32)}

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], self._feed(x))[0]

    def predict_on_batch(self, x: Any) -> np.ndarray:
        return self(x)

    def predict(self, x: Any, batch_size: int = 32, verbose: Any = 0) -> np.ndarray:
        feed = self._feed(x)
        n = len(next(iter(feed.values())))
        outs = [self.session.run([OUTPUT_NAME], {k: v[i:i + batch_size] for k, v in feed.items()})[0]
                for i in range(0, n, batch_size)]
        return np.concatenate(outs)


def weights_digest(model: Any) -> str:
    """sha256 (hex, 16 characters) of a Keras model's weight values, names and shapes: the
    cache key of its exported graph."""
    h = hashlib.sha256()
    for w in model.weights:
        v = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        h.update(f"{w.path}:{v.shape}:{v.dtype}".encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Folder of cached exported graphs: ``$ZOO_HOME/onnx`` (default ``~/.cache/zoo/onnx``)."""
    home = os.environ.get("ZOO_HOME") or Path.home() / ".cache" / "zoo"
    return Path(home) / "onnx"


def onnx_members(entry: str, variant: str, models: Sequence[Any], *,
                 cache: bool = True) -> list[OnnxMember]:
    """Export each Keras member (or reuse its cached graph) and open it with onnxruntime.

    Args:
        entry, variant: for the cache path ``cache_dir()/<entry>/<variant>/member{i}-<digest>.onnx``.
        models: the Keras members with their weights loaded.
        cache: reuse and write cached graphs (keyed by :func:`weights_digest`, so new weights
            never reuse an old graph).
    Returns:
        One :class:`OnnxMember` per member, in member order.
    Raises:
        BackendError: tf2onnx/onnxruntime missing, or a conversion failed.
    """
    require()
    out = []
    for i, model in enumerate(models):
        path = cache_dir() / entry / variant / f"member{i}-{weights_digest(model)}.onnx"
        if cache and path.is_file():
            out.append(OnnxMember(path, name=f"member{i}"))
            continue
        log.info("%s %s member%d: converting to ONNX once (cached in %s)", entry, variant, i, path.parent)
        proto = to_onnx(model)
        if cache:
            try:
                write_model(proto, path)
            except OSError as exc:  # read-only cache: run from memory, convert again next time
                log.warning("ONNX cache %s is not writable (%s); set ZOO_HOME to a writable folder "
                            "to keep converted graphs", path.parent, exc)
        out.append(OnnxMember(proto, name=f"member{i}"))
    return out


def export(model: Any, path: str | os.PathLike, *, fused: bool = False) -> list[Path]:
    """Write a loaded :class:`~zoo.model.ZooModel`'s members as ONNX files.

    Args:
        model: a ZooModel loaded with the Keras backend.
        path: ``FILE.onnx``. One member (or ``fused``) is written to ``FILE.onnx``; several
            members to ``FILE.member0.onnx``, ``FILE.member1.onnx``... beside it.
        fused: write one graph whose output is the mean of every member's output (what
            ``slicewise`` and ``sliding_window`` ensembles run, ``model.fused``); refused for
            entries whose members do not all see the same input (multi-view, no ensemble).
    Returns:
        The written paths, in member order.
    Raises:
        BackendError: tf2onnx/onnxruntime missing, or a conversion failed.
        OutputError: ``path`` does not end in ``.onnx``, or ``fused`` for an entry that cannot be fused.
    """
    dest = Path(path)
    if dest.suffix.lower() != ".onnx":
        raise errors.OutputError(f"ONNX output {dest} must end in .onnx (e.g. -o {dest.with_suffix('.onnx')})")
    if getattr(model, "backend", "keras") != "keras":
        raise errors.BackendError("export needs the Keras members: load with backend='keras'")
    if fused and len(model.models) > 1:
        inf = model.card["inference"]
        if inf.get("mode") not in ("slicewise", "sliding_window") or inf.get("ensemble") not in ("mean", "logit_mean"):
            raise errors.OutputError(
                f"{model.card.id}: its members are not averaged on one input (inference mode "
                f"{inf.get('mode')!r}, ensemble {inf.get('ensemble')!r}); export them without --fused")
        to_onnx(model.fused, dest)
        return [dest]
    if len(model.models) == 1:
        to_onnx(model.models[0], dest)
        return [dest]
    stem = dest.name[: -len(".onnx")]
    paths = [dest.with_name(f"{stem}.member{i}.onnx") for i in range(len(model.models))]
    protos = [to_onnx(m) for m in model.models]  # convert all first: no partial set on failure
    for proto, p in zip(protos, paths):
        write_model(proto, p)
    return paths
