"""The registry: entry name -> card + builder + prediction; ``list``, ``card`` and ``load``."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from zoo import errors, weights as weights_mod
from zoo.card import ModelCard

log = logging.getLogger(__name__)

#: Entry id -> module implementing ``build_members(card, variant)`` and ``predict(model, volumes)``.
ENTRIES: dict[str, str] = {
    "skull_stripping": "zoo.entries.skull_stripping",
    "diamondgan": "zoo.entries.diamondgan",
    "wmh_ensemble": "zoo.entries.wmh_ensemble",
    "lung_nodule": "zoo.entries.lung_nodule",
    "spine_vertebrae": "zoo.entries.spine_vertebrae",
    "claustrum_multiview": "zoo.entries.claustrum_multiview",
    "neonatal_claustrum": "zoo.entries.neonatal_claustrum",
}

#: Sentinel for "resolve weights from the card" (cache, bundled folder, URLs).
DEFAULT = "default"


def _check(name: str) -> str:
    if name not in ENTRIES:
        raise errors.UnknownEntryError(
            f"unknown entry {name!r}; available entries: {', '.join(sorted(ENTRIES))} (see zoo.list())")
    return name


def card(name: str) -> ModelCard:
    """The validated model card of entry ``name``. Raises UnknownEntryError, CardError."""
    return ModelCard.bundled(_check(name))


def list_entries():
    """One row per registered entry as a ``pandas.DataFrame``: name, task, modalities,
    version, variants, default variant and weights status per variant (``bundled``,
    ``ZOO_WEIGHTS_DIR``, ``cached``, ``download`` (card URLs), ``missing`` or ``none shipped``)."""
    import pandas as pd

    rows = []
    for name in sorted(ENTRIES):
        c = card(name)
        rows.append({
            "name": name,
            "task": c["task"],
            "modalities": ", ".join(i["modality"] for i in c["inputs"] if not i["optional"]),
            "version": c.version,
            "variants": ", ".join(c["variants"]),
            "default_variant": c["default_variant"],
            "weights": ", ".join(f"{v}: {_weights_status(rec['weights'])}" for v, rec in c["variants"].items()),
        })
    return pd.DataFrame(rows, columns=["name", "task", "modalities", "version", "variants",
                                       "default_variant", "weights"])


def _weights_status(records: list[dict]) -> str:
    if not records:
        return "none shipped"
    if all(weights_mod.bundled_path(r["file"]) is not None for r in records):
        return "bundled"
    if all(weights_mod.weights_dir_path(r["file"]) is not None
           or weights_mod.bundled_path(r["file"]) is not None for r in records):
        return "ZOO_WEIGHTS_DIR"
    if all((weights_mod.cache_dir() / r["file"]).is_file() for r in records):
        return "cached"
    return "download" if all(r.get("urls") for r in records) else "missing"


#: Environment variable that overrides the card's default backend (``keras``, ``onnx`` or ``auto``).
BACKEND_ENV = "ZOO_BACKEND"


def resolve_backend(c: ModelCard, backend: str | None, trained: bool) -> str:
    """The backend a load runs with: ``"keras"`` or ``"onnx"``.

    ``backend`` None takes ``$ZOO_BACKEND``, else the card's ``inference.backend``, else
    ``"keras"``. ``"auto"`` is ``"onnx"`` when tf2onnx and onnxruntime are importable and the
    members carry trained weights (an untrained architecture is for training, not exported),
    else ``"keras"``.

    Raises:
        BackendError: a value other than keras, onnx or auto.
    """
    from zoo.onnx_backend import BACKENDS, available

    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or c["inference"].get("backend") or "keras"
    if backend not in (*BACKENDS, "auto"):
        raise errors.BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)} or auto")
    if backend == "auto":
        return "onnx" if trained and available() else "keras"
    return backend


def load(name: str, variant: str | None = None, weights: Any = DEFAULT,
         options: Mapping[str, Any] | None = None, backend: str | None = None,
         profile: str | None = None):
    """Load an entry: build its Keras members and load their weights.

    Args:
        name: entry id (``zoo.list()``).
        variant: variant name (default: the card's ``default_variant``).
        weights: ``"default"`` resolves the card's weight files (explicit > user cache
            ``$ZOO_HOME`` > bundled ``weights/`` > the card's URLs, each sha256-checked);
            ``None`` builds the untrained architecture; ``"upstream"`` fetches (or finds in the
            cache) the authors' published weights of the variant, sha256-checked and converted
            (:func:`zoo.presets.fetch`), and runs them with their reference preprocessing
            profile; a folder, a file, a list of files or an http(s) URL loads those (a folder
            holds ``member0.npz``, ``member1.npz``, ...).
        options: paper-vs-code switches from the card's ``options`` (e.g.
            ``{"threshold": 0.45, "mask_method": "nonzero"}``).
        backend: ``"keras"``, ``"onnx"`` or ``"auto"``; None (default): ``$ZOO_BACKEND``, else
            the card's ``inference.backend``, else keras (:func:`resolve_backend`; wmh_ensemble's
            card says ``auto``: onnx when onnxruntime and tf2onnx are installed). With onnx the
            members are exported to ONNX once (cached under ``$ZOO_HOME/onnx``, keyed by their
            weights) and run by onnxruntime through the entry's unchanged ``predict`` flow
            (:mod:`zoo.onnx_backend`).
        profile: the preprocessing profile (card ``profiles``); default: the one belonging to
            the weights (the upstream record's first profile for ``"upstream"``, the card's own
            sections otherwise). A profile that belongs to other weights raises
            ProfileMismatchError.
    Returns:
        :class:`~zoo.model.ZooModel`.
    Raises:
        UnknownEntryError, UnknownVariantError, CardError, WeightsNotAvailableError,
        ChecksumError (UpstreamHashChangedError), WeightsError (ConversionError,
        ProfileMismatchError, OptionMismatchError), BackendError (unknown backend, onnx extra missing).
    """
    from zoo import presets, trained_options
    from zoo.model import ZooModel  # imports Keras/TensorFlow: only when a model is loaded

    base = card(name)
    base.variant(variant)  # UnknownVariantError first
    variant = variant or base["default_variant"]
    kind = presets.weights_kind(weights, DEFAULT)
    trained, where = trained_options.recorded(base, variant, kind, weights)  # e.g. lung_nodule's frame
    options = trained_options.merged(base, trained, where, options) if trained else options
    c = base.with_profile(presets.choose_profile(base, variant, kind, profile)).with_options(options)
    backend = resolve_backend(c, backend, trained=weights is not None)
    rec = c.variant(variant)
    if backend == "onnx":
        from zoo.onnx_backend import require

        require()  # before building anything: a missing extra is a one-line error
    entry = importlib.import_module(ENTRIES[name])
    if kind == "upstream":  # before building: a missing or refused upstream file fails fast
        paths, checksums = presets.fetch(name, variant)
    models = entry.build_members(c, variant)
    source = None
    if kind == "upstream":
        if len(paths) != len(models):
            raise errors.WeightsError(
                f"{c.id} (variant {variant}) has {len(paths)} upstream member weights but "
                f"{len(models)} members are built; keep n_members at the authors' count")
        for model, path, digest in zip(models, paths, checksums):
            weights_mod.load_weights(model, path, sha256=digest)
        source = [str(p) for p in paths]
    elif weights is not None:
        paths, checksums = _weight_paths(c, variant, rec["weights"], weights, len(models))
        for model, path, digest in zip(models, paths, checksums):
            weights_mod.load_weights(model, path, sha256=digest)
        source = [str(p) for p in paths]
    if backend == "onnx":
        from zoo.onnx_backend import onnx_members

        return ZooModel(c, variant, onnx_members(c.id, variant, models), entry, source,
                        backend="onnx", keras_models=models)
    return ZooModel(c, variant, models, entry, source)


def _how_to(c: ModelCard, variant: str) -> str:
    """The card's own instructions for getting weights (``variants.<v>.upstream_weights.how_to``,
    and the ``upstream`` preset when the variant has one)."""
    how = (c.variant(variant).get("upstream_weights") or {}).get("how_to")
    if c.variant(variant).get("upstream"):
        how = (f"{how} Or " if how else "") + (
            f"load the authors' published weights with weights='upstream' (zoo fetch {c.id} "
            f"--variant {variant} --upstream; offline: --from-dir FOLDER)")
    return f". How to get them: {' '.join(str(how).split())}" if how else ""


def _weight_paths(c: ModelCard, variant: str, records: list[dict], weights: Any,
                  n_members: int) -> tuple[list[Path], list[str | None]]:
    """Weight files and the checksums to verify them with.

    Explicit local files (a folder of ``member{i}.npz``, a file, a list) are the user's own
    weights and load without a card checksum; an explicit URL and the default resolve the
    card's records (each sha256-checked).
    """
    explicit = None if weights == DEFAULT else weights
    is_url = isinstance(explicit, str) and explicit.split("://", 1)[0] in ("http", "https", "file")
    if explicit is None or is_url:
        if records:
            paths = weights_mod.resolve(records, c.id, variant, explicit=explicit)
            if len(paths) != n_members:
                raise errors.WeightsError(
                    f"{c.id} (variant {variant}) ships {len(paths)} member weights but n_members is "
                    f"{n_members}; pass your own weights or keep n_members={len(paths)}")
            return list(paths), [r["sha256"] for r in records]
        raise errors.WeightsNotAvailableError(
            f"{c.id} (variant {variant}) ships no trained weights in card version {c.version}. "
            f"Pass weights='folder/with/member0.npz...' (e.g. from `zoo train` or converted from the "
            f"authors' Keras 2 .h5 files with zoo.weights.convert_keras2_h5_files), or weights=None "
            f"for the untrained architecture" + _how_to(c, variant))
    if isinstance(explicit, (list, tuple)):
        paths = [Path(p) for p in explicit]
    else:
        p = Path(os.fspath(explicit))
        if not p.exists():
            raise errors.WeightsNotAvailableError(
                f"weights path not found: {p}; give a folder with member0.npz..., a list of files, "
                "or weights=None for the untrained architecture")
        paths = [p / f"member{i}.npz" for i in range(n_members)] if p.is_dir() else [p]
    if len(paths) != n_members:
        raise errors.WeightsError(
            f"{c.id} (variant {variant}) has {n_members} members but {len(paths)} weight file(s) "
            f"were given: {[str(p) for p in paths]}")
    for p in paths:
        if not p.is_file():
            raise errors.WeightsNotAvailableError(f"weights file not found: {p}")
    log.warning("%s: loading your own weights without a card checksum (%s)", c.id, ", ".join(map(str, paths)))
    return paths, [None] * len(paths)
