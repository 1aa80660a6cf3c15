"""Keras 2 HDF5 weights (the authors' ``.h5`` files) -> the zoo's ``.npz`` format, by layer order.

Layout read (Keras 2 ``model.save_weights`` or a full-model file, where the same sits in the
``model_weights`` group): the root attribute ``layer_names`` lists the layers in model order;
each layer's group has the attribute ``weight_names`` (e.g. ``conv2d_1/kernel:0``,
``conv2d_1/bias:0``) and one dataset per weight. Convolution kernels are ``(kh, kw, c_in,
c_out)``, as in Keras 3, so arrays are copied unchanged.

:func:`write_keras2_h5` writes the same layout (used by the parity fixtures and tests to put
seeded random weights into the authors' file layout).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ConversionError
from zoo.io import publish
from zoo.weights import _short_list, save_weights

logger = logging.getLogger(__name__)

#: ``[(layer_name, [(weight_name, array), ...]), ...]``: the layers that have weights, in order.
Layout = list[tuple[str, list[tuple[str, np.ndarray]]]]

__all__ = ["SOURCE_SUFFIXES", "convert_files", "convert_keras2_h5", "convert_keras2_h5_files", "read_keras2_h5",
           "write_keras2_h5"]

#: File ending of the authors' files (the digest recorded for them is the file's sha256).
SOURCE_SUFFIXES = (".h5",)


def _h5_str_list(group: Any, name: str) -> list[str] | None:
    """A Keras 2 string-list attribute (possibly split into ``name0``, ``name1``, ...)."""
    if name in group.attrs:
        values = list(np.asarray(group.attrs[name]).ravel())
    elif f"{name}0" in group.attrs:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(np.asarray(group.attrs[f"{name}{i}"]).ravel())
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras2_h5(h5_path: str | os.PathLike) -> Layout:
    """The layers with weights of a Keras 2 ``.h5`` file, in file order.

    Returns:
        ``[(layer_name, [(weight_name, array), ...]), ...]`` (arrays as stored, e.g. float32).
    Raises:
        ConversionError: not an HDF5 file, no ``layer_names`` attribute, or a listed layer or
            weight that the file does not hold.
    """
    import h5py

    h5_path = Path(h5_path)
    try:
        fh = h5py.File(h5_path, "r")
    except OSError as exc:
        raise ConversionError(f"{h5_path}: not a readable HDF5 file ({exc})") from exc
    with fh:
        root = fh
        layer_names = _h5_str_list(root, "layer_names")
        if layer_names is None and "model_weights" in fh:
            root = fh["model_weights"]
            layer_names = _h5_str_list(root, "layer_names")
        if layer_names is None:
            raise ConversionError(
                f"{h5_path}: no 'layer_names' attribute at the root or in 'model_weights', so "
                "this is not a Keras 2 weights file")
        layers: Layout = []
        for layer_name in layer_names:
            if layer_name not in root:
                raise ConversionError(f"{h5_path}: layer {layer_name!r} is listed but has no group")
            group = root[layer_name]
            weights = []
            for weight_name in _h5_str_list(group, "weight_names") or []:
                if weight_name not in group:
                    raise ConversionError(
                        f"{h5_path}: layer {layer_name!r} lists weight {weight_name!r}, which is "
                        "not in the file")
                weights.append((weight_name, np.asarray(group[weight_name])))
            if weights:
                layers.append((layer_name, weights))
    return layers


def write_keras2_h5(path: str | os.PathLike, layers: Layout, *, full_model: bool = False,
                    weightless: Sequence[str] = ()) -> Path:
    """Write ``layers`` in the Keras 2 ``save_weights`` layout (``full_model``: inside a
    ``model_weights`` group, as a full-model file), atomically.

    Args:
        path: the ``.h5`` file to write.
        layers: ``[(layer_name, [(weight_name, array), ...]), ...]`` in model order; weight
            names as Keras 2 writes them (``conv2d_1/kernel:0``).
        full_model: write the full-model layout.
        weightless: names of layers without weights to list too (Keras 2 lists every layer).
    Returns:
        ``path``.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as fh:
            root = fh.create_group("model_weights") if full_model else fh
            names = [name for name, _ in layers] + list(weightless)
            root.attrs["layer_names"] = np.asarray([n.encode("utf-8") for n in names])
            root.attrs["backend"] = b"tensorflow"
            root.attrs["keras_version"] = b"2.2.4"
            for name, weights in layers:
                group = root.create_group(name)
                group.attrs["weight_names"] = np.asarray([w.encode("utf-8") for w, _ in weights])
                for weight_name, value in weights:
                    group.create_dataset(weight_name, data=value)
            for name in weightless:
                root.create_group(name).attrs["weight_names"] = np.asarray([], dtype="S1")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _short_weight_name(name: str) -> str:
    """``'conv2d_1/kernel:0'`` -> ``'kernel'``."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def assign_keras2_layout(model: Any, legacy: Layout, source: str) -> int:
    """Assign a Keras 2 layout to ``model`` by layer order; the model is only modified once
    every weight matched.

    The legacy layers that have weights, in order, are matched to the model's layers that have
    weights, in ``model.layers`` order. Within a layer, weights are matched by short name
    (``kernel``, ``bias``, ``gamma``...) when both sides have the same names, else by order.

    Returns:
        the number of weights assigned.
    Raises:
        ConversionError: different numbers of weighted layers or of weights in a layer, or a
            shape mismatch; the message names ``source``, the upstream layer and weight, the model
            variable and both shapes.
    """
    model_layers = [layer for layer in model.layers if layer.weights]
    if len(legacy) != len(model_layers):
        raise ConversionError(
            f"{source}: has {len(legacy)} layers with weights, the model has "
            f"{len(model_layers)} (file: {_short_list([n for n, _ in legacy])}; model: "
            f"{_short_list([layer.name for layer in model_layers])}); the file was saved from "
            "another architecture")
    assignments: list[tuple[Any, np.ndarray]] = []
    for (legacy_name, legacy_weights), layer in zip(legacy, model_layers):
        variables = list(layer.weights)
        if len(legacy_weights) != len(variables):
            raise ConversionError(
                f"{source}: layer {legacy_name!r} has {len(legacy_weights)} weights "
                f"({_short_list([w for w, _ in legacy_weights])}), but model layer "
                f"{layer.name!r} has {len(variables)} "
                f"({_short_list([v.path for v in variables])}); not every weight can be consumed")
        legacy_short = [_short_weight_name(w) for w, _ in legacy_weights]
        model_short = [v.name for v in variables]
        if len(set(legacy_short)) == len(legacy_short) and set(legacy_short) == set(model_short):
            by_name = dict(zip(legacy_short, legacy_weights))
            pairs = [(by_name[v.name], v) for v in variables]
        else:
            pairs = list(zip(legacy_weights, variables))
        for (weight_name, array), variable in pairs:
            if tuple(array.shape) != tuple(variable.shape):
                raise ConversionError(
                    f"{source}: weight {weight_name!r} of layer {legacy_name!r} has shape "
                    f"{tuple(array.shape)}, but model variable {variable.path!r} has shape "
                    f"{tuple(variable.shape)}; the file was saved from another architecture")
            assignments.append((variable, array))
    n_legacy = sum(len(w) for _, w in legacy)
    n_model = len(model.weights)
    n_filled = len({id(variable) for variable, _ in assignments})
    if len(assignments) != n_legacy or n_filled != n_model:
        raise ConversionError(
            f"{source}: {len(assignments)} weights matched, but the file has {n_legacy} and the "
            f"model {n_model}; not every weight was consumed or filled")
    for variable, array in assignments:
        variable.assign(np.asarray(array).astype(variable.dtype))
    return len(assignments)


def convert_keras2_h5(model: Any, h5_path: str | os.PathLike, out_path: str | os.PathLike,
                      storage: str = "float16") -> str:
    """Load an authors' Keras 2 ``.h5`` weights file into ``model`` and save it in our format.

    Args:
        model: a built Keras 3 Functional model with the same architecture as the one the file
            was saved from (layer names may differ).
        h5_path: a Keras 2 weights file (root attribute ``layer_names``) or full-model file.
        out_path: the ``.npz`` file to write with :func:`zoo.weights.save_weights`.
        storage: dtype of the stored floating-point weights, ``"float16"`` or ``"float32"``
            (the upstream presets use float32: exactness over bytes).
    Returns:
        the sha256 hex digest of the written ``.npz``.
    Raises:
        ConversionError (a WeightsError): not a Keras 2 file, or a layout that does not fit
            (see :func:`assign_keras2_layout`); nothing is written and the model is unchanged.
    """
    h5_path = Path(h5_path)
    n = assign_keras2_layout(model, read_keras2_h5(h5_path), str(h5_path))
    logger.info("converted %s (%d weights) -> %s", h5_path, n, out_path)
    return save_weights(model, out_path, storage=storage)


def convert_files(build_fn: Callable[[], Any], sources: Sequence[str | os.PathLike],
                  out_dir: str | os.PathLike, *, names: Sequence[str] | None = None,
                  file_prefix: str = "", storage: str = "float32") -> list[dict]:
    """Convert several Keras 2 ``.h5`` files (ensemble members, in member order); all or nothing.

    Args:
        build_fn: returns a fresh Keras 3 model of the right architecture (called once per file).
        sources: the legacy files, in member order.
        out_dir: folder for the ``.npz`` files (created if missing).
        names: output file names; default ``member0.npz``, ``member1.npz``, ...
        file_prefix: prepended to each record's ``file`` (e.g. ``"wmh_ensemble/flair_t1"``).
        storage: ``"float32"`` (default here) or ``"float16"``.
    Every file is converted into a temporary folder inside ``out_dir``; only when all converted
    are they moved into place, so a failure leaves ``out_dir`` as it was.

    Returns:
        card-ready records ``{"file": ..., "sha256": ..., "size": ...}``, in ``sources`` order.
    Raises:
        ConversionError: as :func:`convert_keras2_h5`, or ``names`` of the wrong length.
    """
    from zoo.converters import convert_all_or_nothing

    return convert_all_or_nothing(
        lambda source, path: convert_keras2_h5(build_fn(), source, path, storage=storage),
        sources, out_dir, names=names, file_prefix=file_prefix, what=".h5 files")


def convert_keras2_h5_files(build_fn: Callable[[], Any], h5_paths: Sequence[str | os.PathLike],
                            out_dir: str | os.PathLike, *, names: Sequence[str] | None = None,
                            file_prefix: str = "", storage: str = "float16") -> list[dict]:
    """:func:`convert_files` with float16 storage by default (the zoo's storage; kept for
    existing callers: cards' ``how_to`` and the claustrum tests)."""
    return convert_files(build_fn, h5_paths, out_dir, names=names, file_prefix=file_prefix,
                         storage=storage)
