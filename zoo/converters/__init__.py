"""Converters of the authors' published weights into the zoo's ``.npz`` format, one module per
source format:

=============== ============================================ ===================================
format          module                                       source
=============== ============================================ ===================================
``keras2_h5``   :mod:`zoo.converters.keras2_h5`              Keras 2 ``.h5`` (``save_weights`` or
                                                             a full-model file), by layer order
``monai_unet``  :mod:`zoo.converters.monai_unet`             MONAI ``UNet`` state_dict (``.npz``
                                                             of its arrays, safetensors, or
                                                             ``.pt`` with ``weights_only=True``);
                                                             torch is optional
=============== ============================================ ===================================

Each module exposes ``convert_files(build_fn, sources, out_dir, *, names=None, file_prefix="",
storage="float32") -> list[dict]`` (card-ready records ``{"file", "sha256", "size"}``) and may
set, for :mod:`zoo.presets` (defaults in brackets): ``SOURCE_SUFFIXES`` (file endings of an
upstream file, searched in order [``("",)``]), ``source_digest(path) -> str`` (the digest
recorded and checked for an upstream file [the file's sha256]; a content digest where the same
weights come in containers whose bytes differ), ``PUBLISHED_FILES_CONVERTIBLE`` (whether the
files at the card's URLs can be downloaded and converted [True]) and, when they cannot,
``extraction_instructions(names, *, local, repo, revision, entry) -> str``. A
conversion either writes every output file or none: the files are converted into a temporary
folder and published only when every member converted. A layout that does not fit raises
:class:`zoo.errors.ConversionError` naming the upstream layer and the shapes.

:func:`convert_files` dispatches by format name; :mod:`zoo.presets` uses it for the ``upstream``
weights of the cards.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from zoo.errors import ConversionError

#: Format name (a card's ``upstream.format``) -> module implementing ``convert_files``.
FORMATS: dict[str, str] = {
    "keras2_h5": "zoo.converters.keras2_h5",
    "monai_unet": "zoo.converters.monai_unet",
}

__all__ = ["FORMATS", "convert_all_or_nothing", "convert_files", "digest_kind", "module_for",
           "published_files_convertible", "source_digest", "source_suffixes"]


def module_for(fmt: str) -> Any:
    """The converter module of format ``fmt`` (e.g. ``"keras2_h5"``).

    Raises:
        ConversionError: an unknown format, or its module cannot be imported (e.g. an optional
            dependency such as torch is missing: the message says what to install).
    """
    if fmt not in FORMATS:
        raise ConversionError(f"unknown upstream weights format {fmt!r}; known: {sorted(FORMATS)}")
    try:
        return importlib.import_module(FORMATS[fmt])
    except ImportError as exc:
        raise ConversionError(
            f"the converter for {fmt!r} ({FORMATS[fmt]}) cannot be imported ({exc}); install "
            "the optional dependency it names") from exc


def source_suffixes(fmt: str) -> tuple[str, ...]:
    """File endings an upstream file of format ``fmt`` may have, in search order."""
    return tuple(getattr(module_for(fmt), "SOURCE_SUFFIXES", ("",)))


def source_digest(fmt: str, path: str | os.PathLike) -> tuple[str, str]:
    """``(digest, kind)`` of an upstream file: the converter's content digest (kind
    ``"content"``) when it defines one, else the file's sha256 (kind ``"file"``).

    Raises:
        ConversionError: the converter cannot read the file (e.g. a refused pickle).
    """
    if digest_kind(fmt) == "content":
        return str(module_for(fmt).source_digest(path)), "content"
    from zoo.weights import sha256_file

    return sha256_file(path), "file"


def digest_kind(fmt: str) -> str:
    """``"content"`` when the converter of ``fmt`` defines ``source_digest``, else ``"file"``."""
    return "content" if hasattr(module_for(fmt), "source_digest") else "file"


def published_files_convertible(fmt: str) -> bool:
    """False when the files at the card's URLs are never downloaded (they need a one-off
    extraction outside the zoo, which the converter's ``extraction_instructions`` gives)."""
    return bool(getattr(module_for(fmt), "PUBLISHED_FILES_CONVERTIBLE", True))


def convert_files(fmt: str, build_fn: Callable[[], Any], sources: Sequence[str | os.PathLike],
                  out_dir: str | os.PathLike, **kwargs: Any) -> list[dict]:
    """Convert upstream files of format ``fmt`` (one per ensemble member, in member order) into
    ``out_dir`` with ``build_fn()`` building each fresh Keras model; see the module docstring.

    Returns:
        card-ready records ``{"file", "sha256", "size"}`` in ``sources`` order.
    Raises:
        ConversionError: unknown format, or a file that does not fit the architecture.
    """
    return module_for(fmt).convert_files(build_fn, sources, out_dir, **kwargs)


def convert_all_or_nothing(convert_one: Callable[[Any, Any], str], sources: Sequence[Any],
                           out_dir: str | os.PathLike, *, names: Sequence[str] | None = None,
                           file_prefix: str = "", what: str = "files") -> list[dict]:
    """Run ``convert_one(source, path) -> sha256`` for every source into a temporary folder
    inside ``out_dir`` and move the files into place only when every one converted, so a failure
    leaves ``out_dir`` as it was (the shared body of each format's ``convert_files``).

    Args:
        convert_one: converts one source into the given ``.npz`` path and returns its sha256.
        sources: one per member, in member order.
        out_dir: the output folder (created if missing).
        names: output file names; default ``member0.npz``, ``member1.npz``, ...
        file_prefix: prepended to each record's ``file``.
        what: the sources' kind for messages (e.g. ``".h5 files"``).
    Returns:
        card-ready records ``{"file", "sha256", "size"}`` in ``sources`` order.
    Raises:
        ConversionError: ``names`` of the wrong length or not distinct; whatever ``convert_one``
            raises passes through (nothing written).
    """
    import shutil
    import tempfile
    from pathlib import Path

    out_dir = Path(out_dir)
    names = list(names) if names is not None else [f"member{i}.npz" for i in range(len(sources))]
    if len(names) != len(sources) or len(set(names)) != len(names):
        raise ConversionError(f"{len(sources)} {what} need as many distinct output names, got {names!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".converting-"))
    try:
        records = []
        for source, name in zip(sources, names):
            digest = convert_one(source, staging / name)
            rel = f"{file_prefix.strip('/')}/{name}" if file_prefix.strip("/") else name
            records.append({"file": rel, "sha256": digest, "size": (staging / name).stat().st_size})
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return records
