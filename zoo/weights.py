"""Store, find, download, verify and load model weights: the one place that does it.

Storage format
--------------
One ``.npz`` file (``numpy.savez``, uncompressed) per ensemble member. It holds every weight
variable of a Keras model (``model.weights``) as an array keyed by the variable's Keras 3
``path`` (e.g. ``enc1_conv1/kernel``); floating-point weights are stored as float16 (half the
bytes) and cast back to the model variable's dtype (float32) on load. A ``__meta__`` entry holds
a small JSON object (format name and version, Keras version, number of parameters) encoded as a
uint8 byte array. Nothing is pickled, and files are read with ``np.load(..., allow_pickle=False)``,
so loading weights never executes code.

Resolution order (:func:`resolve`)
----------------------------------
For each weights record of a model card (``{"file", "sha256", "urls", "size"}``):

1. ``explicit``: the ``weights=`` argument: a local folder holding the files by basename, a
   single file (only for one-member variants), or an ``http(s)://`` / ``file://`` URL prefix to
   which the basename is appended;
2. a weights folder named by ``$ZOO_WEIGHTS_DIR``, laid out like the repository's ``weights/``
   (``$ZOO_WEIGHTS_DIR/<file>``, e.g. ``wmh_ensemble/flair/member0.npz``): how an installed
   wheel, which carries no ``.npz`` files, finds weights copied or unpacked by hand;
3. the user cache, ``$ZOO_HOME/weights/<file>`` (``$ZOO_HOME`` defaults to ``~/.cache/zoo``);
4. the bundled weights shipped with the package (``zoo.bundled_weights/<file>``; present in a
   source checkout and its editable install, absent from wheels);
5. the card's URLs (mirrors, tried in order), downloaded into the cache (or into a fresh
   temporary folder when the cache is read-only).

Every file found is checked against the card's sha256. Downloads stream into a hidden staging
file in the destination folder (``.<name>.part``) and are moved into place with ``os.replace``
only once the sha256 of the whole file is verified, so an interrupted or corrupt download never
leaves a file at the final path. An interrupted download keeps its staging file and the next
call resumes it with an HTTP ``Range`` request (:mod:`zoo.transfer`).

Upstream weights in other formats (the authors' Keras 2 ``.h5``, MONAI state_dicts) are converted
into this format by :mod:`zoo.converters`; :mod:`zoo.presets` fetches the authors' published
files (sha256 recorded on first download) and converts them.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import json
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo import transfer
from zoo.errors import ChecksumError, DownloadError, WeightsError, WeightsNotAvailableError
from zoo.io import publish

logger = logging.getLogger(__name__)

FORMAT_NAME = "zoo-weights"
FORMAT_VERSION = 1
META_KEY = "__meta__"
_CHUNK = 1 << 20  # 1 MiB, for hashing and downloading
_URL_SCHEMES = ("http://", "https://", "file://")

__all__ = [
    "FORMAT_VERSION",
    "cache_dir",
    "download",
    "load_weights",
    "resolve",
    "save_weights",
    "sha256_file",
    "zoo_home",
]


# --- hashing -------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Return the sha256 hex digest (lower case) of the file at ``path``, read in 1 MiB chunks.

    Raises ``OSError`` (e.g. ``FileNotFoundError``) if the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(sha256: str, where: str) -> str:
    value = str(sha256).strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise WeightsError(
            f"{where}: {sha256!r} is not a sha256 hex digest (expected 64 hex characters); "
            "fix the weights record of the model card"
        )
    return value


def _verify(path: Path, expected: str, context: str = "") -> None:
    """Raise ChecksumError unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 is {actual}, expected {expected}{context}. The file is corrupt, "
            "incomplete or belongs to another model or version: delete it and fetch it again "
            "(or pass the right file); weights you trained yourself load without a checksum "
            "via zoo.weights.load_weights(model, path)"
        )


# --- our format: save and load --------------------------------------------------------------
def _weight_variables(model: Any) -> dict[str, Any]:
    """``{variable.path: variable}`` for every weight variable of ``model`` (unique paths)."""
    variables: dict[str, Any] = {}
    for variable in model.weights:
        path = variable.path
        if path in variables or path == META_KEY:
            raise WeightsError(
                f"model {getattr(model, 'name', '?')!r}: two weight variables share the path "
                f"{path!r}; give every layer a unique name so weights can be stored by path"
            )
        variables[path] = variable
    return variables


#: Storage dtypes of floating-point weights: float16 (the zoo's own weights, half the bytes) or
#: float32 (the authors' converted weights: float16 alone changes their outputs by up to 2e-3).
STORAGE_DTYPES = ("float16", "float32")


def save_weights(model: Any, path: str | os.PathLike, storage: str = "float16") -> str:
    """Write every weight variable of a Keras model to ``path`` in our ``.npz`` format.

    Args:
        model: a built ``keras.Model`` (or layer) whose weight variables have unique ``path``s.
        path: the file to write (conventionally ``*.npz``); its folder is created if missing.
        storage: ``"float16"`` (default) or ``"float32"``: the dtype of floating-point weights
            in the file (recorded in ``__meta__`` as ``storage``).

    Floating-point weights are stored as ``storage``, others in their own dtype, keyed by
    ``variable.path``, plus the ``__meta__`` JSON record. The file is written to a temporary file
    in the same folder and moved into place with ``os.replace`` (atomic: readers never see a
    partial file).

    Returns:
        the sha256 hex digest of the written file (the value to put in the model card).

    Raises:
        WeightsError: duplicate variable paths, a finite weight too large for float16, or an
            unknown ``storage``.
        OSError: the file cannot be written.
    """
    import keras

    if storage not in STORAGE_DTYPES:
        raise WeightsError(f"{path}: storage {storage!r} is not one of {STORAGE_DTYPES}")
    path = Path(path)
    variables = _weight_variables(model)
    arrays: dict[str, np.ndarray] = {}
    n_params = 0
    for name, variable in variables.items():
        value = np.asarray(variable.numpy())
        n_params += int(value.size)
        if np.issubdtype(value.dtype, np.floating) and storage == "float32":
            arrays[name] = value.astype(np.float32)
        elif np.issubdtype(value.dtype, np.floating):
            with np.errstate(over="ignore"):
                stored = value.astype(np.float16)
            overflow = np.isinf(stored) & np.isfinite(value)
            if overflow.any():
                raise WeightsError(
                    f"{path}: variable {name!r} holds values up to "
                    f"{float(np.abs(value[overflow]).max()):.6g}, beyond the float16 range "
                    "(65504); these weights cannot be stored in the zoo format"
                )
            arrays[name] = stored
        else:
            arrays[name] = value
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "keras_version": keras.__version__,
        "n_params": n_params,
        "storage": storage,
    }
    arrays[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %d weight arrays (%d parameters) to %s", len(variables), n_params, path)
    return digest


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read all arrays and the ``__meta__`` record of a weights file, refusing pickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise WeightsError(
                f"{path}: holds a single .npy array, not a zoo weights (.npz) file"
            )
        with loaded as npz:
            arrays = {key: npz[key] for key in npz.files}
    except WeightsError:
        raise
    except ValueError as exc:  # object arrays / pickled data refused by allow_pickle=False
        raise WeightsError(
            f"{path}: refused to load ({exc}); zoo weights files hold plain numeric arrays "
            "only and are never unpickled. Re-create the file with zoo.weights.save_weights"
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(
            f"{path}: not a readable zoo weights (.npz) file ({type(exc).__name__}: {exc}); "
            "the file is truncated or of another format: fetch it again"
        ) from exc
    if META_KEY not in arrays:
        raise WeightsError(
            f"{path}: has no {META_KEY!r} record, so it was not written by "
            "zoo.weights.save_weights; convert Keras 2 .h5 files with convert_keras2_h5"
        )
    raw = arrays.pop(META_KEY)
    try:
        meta = json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: the {META_KEY!r} record is not valid JSON ({exc})") from exc
    version = meta.get("format_version")
    if meta.get("format") != FORMAT_NAME or not isinstance(version, int):
        raise WeightsError(
            f"{path}: {META_KEY!r} says format {meta.get('format')!r} version {version!r}, "
            f"expected {FORMAT_NAME!r}"
        )
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{path}: weights format version {version} is newer than this zoo understands "
            f"(version {FORMAT_VERSION}); upgrade the zoo package"
        )
    return arrays, meta


def load_weights(
    model: Any, path: str | os.PathLike, sha256: str | None = None
) -> dict[str, Any]:
    """Load a zoo ``.npz`` weights file into ``model``.

    Args:
        model: a built ``keras.Model`` with the architecture the file was saved from (same
            variable paths and shapes).
        path: the ``.npz`` file written by :func:`save_weights`.
        sha256: when given, the file's sha256 must equal it; it is checked before anything is
            read.

    Every model weight variable must have an array of the same shape in the file, and every
    array in the file must belong to a model variable. Arrays are cast to the variable's dtype
    (float16 -> float32). The model is only modified once all checks pass.

    Returns:
        the file's ``__meta__`` record (format version, Keras version, n_params).

    Raises:
        WeightsNotAvailableError: the file does not exist.
        ChecksumError: ``sha256`` is given and differs from the file's digest.
        WeightsError: unreadable file, pickled/object arrays, a model variable missing from the
            file, an unused array in the file, or a shape mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotAvailableError(f"{path}: weights file not found")
    if sha256 is not None:
        _verify(path, _normalise_sha256(sha256, str(path)))
    arrays, meta = _read_npz(path)
    variables = _weight_variables(model)

    missing = [name for name in variables if name not in arrays]
    unused = [name for name in arrays if name not in variables]
    wrong_shape = [
        f"{name}: file {tuple(arrays[name].shape)}, model {tuple(variables[name].shape)}"
        for name in variables
        if name in arrays and tuple(arrays[name].shape) != tuple(variables[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"model variables missing from the file: {_short_list(missing)}")
    if unused:
        problems.append(f"arrays in the file that match no model variable: {_short_list(unused)}")
    if wrong_shape:
        problems.append(f"shape mismatches: {_short_list(wrong_shape)}")
    if problems:
        raise WeightsError(
            f"{path}: does not fit model {getattr(model, 'name', '?')!r}: "
            + "; ".join(problems)
            + ". The file was saved from a different architecture or variant (or with other "
            "layer names); use the weights made for this model"
        )
    try:
        cast = {name: np.asarray(arrays[name]).astype(v.dtype) for name, v in variables.items()}
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: holds arrays that are not numeric ({exc})") from exc
    for name, variable in variables.items():
        variable.assign(cast[name])
    logger.debug("loaded %d weight arrays from %s", len(variables), path)
    return meta


def _short_list(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- places ---------------------------------------------------------------------------------
def zoo_home() -> Path:
    """The zoo's user folder: ``$ZOO_HOME`` if set, else ``~/.cache/zoo``."""
    value = os.environ.get("ZOO_HOME")
    return Path(value).expanduser() if value else Path("~/.cache/zoo").expanduser()


#: Environment variable naming a folder of weights laid out like the repository's ``weights/``.
WEIGHTS_DIR_ENV = "ZOO_WEIGHTS_DIR"


def weights_dir() -> Path | None:
    """The folder named by ``$ZOO_WEIGHTS_DIR``, or None when the variable is unset or empty."""
    value = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def weights_dir_path(rel: str) -> Path | None:
    """``$ZOO_WEIGHTS_DIR/<rel>`` when that file exists, else None."""
    root = weights_dir()
    if root is None:
        return None
    path = root.joinpath(*rel.split("/"))
    return path if path.is_file() else None


def cache_dir() -> Path:
    """The weights cache, ``zoo_home() / "weights"``; a card's ``file`` lives below it."""
    return zoo_home() / "weights"


def _bundled_root() -> Any | None:
    """The folder of bundled weights (a ``Path`` or importlib ``Traversable``), or None.

    Uses ``importlib.resources.files("zoo.bundled_weights")`` (installed package); in a source
    checkout where that package is not importable, falls back to the repository's ``weights/``.
    """
    try:
        return importlib.resources.files("zoo.bundled_weights")
    except (ModuleNotFoundError, TypeError):
        source_tree = Path(__file__).resolve().parent.parent / "weights"
        if (source_tree / "__init__.py").is_file():
            return source_tree
        return None


def bundled_path(rel: str) -> Any | None:
    """The bundled copy of a card weights ``file`` (e.g. ``wmh_ensemble/flair/member0.npz``),
    or None when the package ships no such file."""
    root = _bundled_root()
    if root is None:
        return None
    res = root.joinpath(*rel.split("/"))
    return res if res.is_file() else None


def is_writable_dir(folder: Path) -> bool:
    """True if files can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


class _Destinations:
    """Where downloads of one :func:`resolve` call go: the cache, or a temp folder if read-only."""

    def __init__(self) -> None:
        self.cache = cache_dir()
        self._fallback: Path | None = None

    def for_file(self, rel: str) -> Path:
        dest = self.cache / rel
        if is_writable_dir(dest.parent):
            return dest
        if self._fallback is None:
            self._fallback = Path(tempfile.mkdtemp(prefix="zoo-weights-"))
            logger.warning(
                "weights cache %s is not writable; downloading into the temporary folder %s "
                "instead (set ZOO_HOME to a writable folder to keep downloads)",
                self.cache, self._fallback,
            )
        return self._fallback / rel


# --- download -------------------------------------------------------------------------------
def _progress(total: int | None, desc: str, initial: int = 0) -> Any | None:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but optional here
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                leave=False)


def _fetch_one(url: str, dest: Path, sha256: str | None, timeout: float, size: int | None) -> str | None:
    """Download ``url`` to ``dest`` through its resumable hidden staging file
    (:func:`zoo.transfer.fetch`). Returns None on success, else why it failed.

    Never raises for network or checksum problems: a wrong digest is returned as a failure
    string starting with ``"sha256 mismatch"`` so the caller can try the next mirror.
    """
    if not url.lower().startswith(_URL_SCHEMES):
        return f"unsupported URL scheme (use {', '.join(_URL_SCHEMES)})"
    try:
        transfer.fetch(url, dest, sha256, timeout=timeout, size=size,
                       progress=lambda total, initial, name: _progress(total, name, initial))
        return None
    except transfer.Failed as exc:
        return str(exc)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return f"cannot connect: {exc.reason}"
    except (http.client.HTTPException, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def download(
    url_or_urls: str | Sequence[str],
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    timeout: float = 60,
    size: int | None = None,
    hint: str = "Check the network connection or pass a local copy with weights=...",
) -> Path:
    """Download a file to ``dest``, verifying its sha256; mirrors are tried in order.

    Args:
        url_or_urls: one URL or a list of mirror URLs (``http://``, ``https://`` or ``file://``).
        dest: the final file path; its folder is created if missing.
        sha256: the expected sha256 hex digest; ``None`` only for a file whose digest is not
            known yet (an authors' upstream file on first download: :mod:`zoo.presets` records
            the digest of what arrived and checks every later copy against it).
        timeout: socket timeout in seconds for each connection.
        size: optional expected size in bytes (checked against Content-Length and the bytes read).
        hint: the last sentence of the DownloadError message (what the user can do instead).

    Each attempt streams into the hidden staging file ``.<name>.part`` in ``dest``'s folder
    (with a tqdm progress bar when stderr is a terminal), checks the Content-Length when the
    server sends one and the sha256 of the whole file, and only then moves the file to ``dest``
    with ``os.replace``; a failed download never creates ``dest``. A transfer cut off (connection
    reset, fewer bytes than announced, Ctrl-C) keeps its staged bytes: the next call for the same
    ``dest`` and URL sends ``Range: bytes=N-`` and appends on ``206``, or restarts from zero on
    ``200`` (:mod:`zoo.transfer` says when staged bytes are trusted). A wrong sha256 deletes the
    staged bytes. After a failed attempt the next mirror is tried.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        ChecksumError: bytes arrived from at least one mirror but none hashed to ``sha256``.
        DownloadError: every mirror failed otherwise (the message lists each URL and why).
    """
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    dest = Path(dest)
    expected = None if sha256 is None else _normalise_sha256(sha256, str(dest))
    if not urls:
        raise DownloadError(f"{dest}: no URL to download from")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{dest}: cannot create the destination folder ({exc})") from exc
    failures: list[tuple[str, str]] = []
    for url in urls:
        logger.info("downloading %s -> %s", url, dest)
        why = _fetch_one(url, dest, expected, timeout, size)
        if why is None:
            return dest
        logger.info("download of %s failed: %s", url, why)  # all failures are in the error
        failures.append((url, why))
    listing = "; ".join(f"{url}: {why}" for url, why in failures)
    if any(why.startswith("sha256 mismatch") for _, why in failures):
        raise ChecksumError(
            f"{dest}: downloaded bytes do not match the expected sha256 {expected} ({listing}). "
            "The server holds another file or version; nothing was written. Try another mirror "
            "or report the URL"
        )
    raise DownloadError(
        f"{dest}: could not be downloaded from any of {len(urls)} URL(s) ({listing}); "
        f"nothing was written. {hint}"
    )


# --- resolution -------------------------------------------------------------------------------
def _is_url(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and value.lower().startswith(_URL_SCHEMES)


def _join_url(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + urllib.parse.quote(name)


def _check_record(
    record: dict, entry_id: str, variant: str
) -> tuple[str, str, list[str], int | None]:
    where = f"model card of {entry_id!r} variant {variant!r}"
    if not isinstance(record, dict) or not record.get("file"):
        raise WeightsError(f"{where}: weights record {record!r} has no 'file'")
    rel = str(record["file"])
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise WeightsError(
            f"{where}: weights file {rel!r} must be a relative path inside the cache"
        )
    if not record.get("sha256"):
        raise WeightsError(f"{where}: weights record for {rel!r} has no 'sha256'")
    sha = _normalise_sha256(record["sha256"], f"{where}, file {rel!r}")
    urls = record.get("urls") or []
    if isinstance(urls, str):
        urls = [urls]
    size = record.get("size")
    return rel, sha, [str(u) for u in urls], (int(size) if size is not None else None)


def resolve(
    files: list[dict],
    entry_id: str,
    variant: str,
    explicit: str | os.PathLike | None = None,
) -> list[Path]:
    """Find (downloading if needed) and verify the weights files of one model variant.

    Args:
        files: the card's weights records, one per ensemble member:
            ``{"file": "wmh_ensemble/flair_t1/member0.npz", "sha256": "...",
            "urls": [optional mirror URLs], "size": optional int}``.
        entry_id, variant: the entry and variant (used in messages).
        explicit: the user's ``weights=`` value: a folder holding the files by basename (or by
            their card path), a single file (one-member variants only), or an ``http(s)://`` /
            ``file://`` URL prefix to which each file's basename is appended.

    Resolution order, per file: ``explicit``; ``$ZOO_WEIGHTS_DIR/<file>``; the cache
    ``$ZOO_HOME/weights/<file>`` (default ``~/.cache/zoo``); the bundled ``zoo.bundled_weights/<file>``; the card's URLs, downloaded
    into the cache (or a temporary folder, with a warning, if the cache is read-only). Every
    file found is checked against the record's sha256. A wrong file given explicitly, in
    ``$ZOO_WEIGHTS_DIR`` or in the bundled folder, raises ChecksumError; a corrupt cached file is skipped with a warning (and
    replaced if a download succeeds).

    Returns:
        the local paths, in the order of ``files``.

    Raises:
        WeightsNotAvailableError: ``explicit`` does not exist, or a file was found nowhere (the
            message lists the places searched and how to get weights).
        ChecksumError: a file found (or downloaded) has the wrong sha256.
        WeightsError: a malformed weights record, or a single file given for several members.
    """
    records = [_check_record(r, entry_id, variant) for r in files]
    if not records:
        raise WeightsError(f"model card of {entry_id!r} variant {variant!r} lists no weights files")
    what = f"weights of {entry_id!r} variant {variant!r}"
    explicit_url: str | None = None
    explicit_path: Path | None = None
    if explicit is not None:
        if _is_url(explicit):
            explicit_url = str(explicit)
        else:
            explicit_path = Path(explicit).expanduser()
            if not explicit_path.exists():
                raise WeightsNotAvailableError(
                    f"{explicit_path}: the weights path given for the {what} does not exist; "
                    "pass an existing folder or file, a URL prefix, or weights=None for the "
                    "untrained architecture"
                )
            if explicit_path.is_file() and len(records) > 1:
                raise WeightsError(
                    f"{explicit_path}: a single file was given, but the {what} has "
                    f"{len(records)} ensemble members "
                    f"({', '.join(Path(r[0]).name for r in records)}); pass the folder holding them"
                )
    destinations = _Destinations()
    bundled = _bundled_root()
    found: list[Path] = []
    for rel, sha, urls, size in records:
        found.append(
            _resolve_one(
                rel, sha, urls, size, what, explicit_path, explicit_url, destinations, bundled
            )
        )
    return found


def _resolve_one(
    rel: str,
    sha: str,
    urls: list[str],
    size: int | None,
    what: str,
    explicit_path: Path | None,
    explicit_url: str | None,
    destinations: _Destinations,
    bundled: Any | None,
) -> Path:
    name = Path(rel).name
    context = f" for {rel} ({what})"
    searched: list[str] = []

    # (a) explicit folder / file / URL prefix
    if explicit_path is not None:
        if explicit_path.is_file():
            _verify(explicit_path, sha, context)
            return explicit_path
        for candidate in (explicit_path / name, explicit_path / rel):
            if candidate.is_file():
                _verify(candidate, sha, context)
                return candidate
        searched.append(f"explicit folder {explicit_path} (no {name})")

    # (a2) the weights folder of $ZOO_WEIGHTS_DIR (an explicit URL still goes first)
    if explicit_url is None:
        root = weights_dir()
        if root is not None:
            local = weights_dir_path(rel)
            if local is not None:
                _verify(local, sha, context)
                return local
            searched.append(f"${WEIGHTS_DIR_ENV} {root / rel}")

    # (b) user cache (an explicit URL is not downloaded again if the cache holds its bytes)
    cached = destinations.cache / rel
    cached_ok = cache_stale = False
    if cached.is_file():
        cached_ok = sha256_file(cached) == sha
        cache_stale = not cached_ok
        if cache_stale:
            logger.warning("cached weights %s have the wrong sha256; ignoring them", cached)
    if explicit_url is not None:
        url = _join_url(explicit_url, name)
        if cached_ok:
            return cached
        try:
            return download(url, destinations.for_file(rel), sha, size=size)
        except DownloadError as exc:  # a ChecksumError (wrong bytes) propagates
            searched.append(f"explicit URL {url} ({exc})")
    if cached_ok:
        return cached
    searched.append(
        f"cache {destinations.cache / rel}" + (" (present, wrong sha256)" if cache_stale else "")
    )

    # (c) bundled weights
    if bundled is None:
        searched.append("bundled weights (package zoo.bundled_weights not installed)")
    else:
        resource = bundled
        for part in Path(rel).parts:
            resource = resource.joinpath(part)
        if resource.is_file():
            local = _bundled_as_path(resource, rel, destinations)
            _verify(local, sha, context)
            return local
        searched.append(f"bundled {resource}")

    # (d) the card's URLs
    if urls:
        try:
            return download(urls, destinations.for_file(rel), sha, size=size)
        except DownloadError as exc:  # a ChecksumError (wrong bytes) propagates
            searched.append(f"card URLs ({exc})")
    else:
        searched.append("card URLs (the card lists none)")

    raise WeightsNotAvailableError(
        f"{rel}: {what} not found. Searched: " + "; ".join(searched)
        + ". To get weights: pass weights=\"path/to/folder_or_file\" or "
        "weights=\"https://host/prefix/\" to the loader, put the file at "
        f"{destinations.cache / rel} (the cache; set ZOO_HOME to move it), set {WEIGHTS_DIR_ENV} "
        "to a folder laid out like the repository's weights/ (e.g. a checkout's weights/), or pass "
        "weights=None to build the untrained architecture (for training or fine-tuning)"
    )


def _bundled_as_path(resource: Any, rel: str, destinations: _Destinations) -> Path:
    """A filesystem path for a bundled resource (copied to the cache if inside an archive)."""
    if isinstance(resource, Path):
        return resource
    dest = destinations.for_file(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, resource.open("rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                out.write(chunk)
        publish(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


# --- converters (moved to zoo.converters; these names stay for existing callers) ---------------
def __getattr__(name: str) -> Any:
    """``convert_keras2_h5`` and ``convert_keras2_h5_files`` live in
    :mod:`zoo.converters.keras2_h5`; they are still reachable here (lazily, so importing
    ``zoo.weights`` does not import h5py)."""
    if name in ("convert_keras2_h5", "convert_keras2_h5_files"):
        from zoo.converters import keras2_h5

        return getattr(keras2_h5, name)
    raise AttributeError(f"module 'zoo.weights' has no attribute {name!r}")
