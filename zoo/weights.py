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

Every file found is checked against the card's sha256. Downloads stream into a temporary file in
the destination folder and are moved into place with ``os.replace`` only once verified, so an
interrupted or corrupt download never leaves a file behind.

Upstream Keras 2 weights (``.h5``) are converted into this format by :func:`convert_keras2_h5`.
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
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    "convert_keras2_h5",
    "convert_keras2_h5_files",
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


def save_weights(model: Any, path: str | os.PathLike) -> str:
    """Write every weight variable of a Keras model to ``path`` in our ``.npz`` format.

    Args:
        model: a built ``keras.Model`` (or layer) whose weight variables have unique ``path``s.
        path: the file to write (conventionally ``*.npz``); its folder is created if missing.

    Floating-point weights are stored as float16, others in their own dtype, keyed by
    ``variable.path``, plus the ``__meta__`` JSON record. The file is written to a temporary file
    in the same folder and moved into place with ``os.replace`` (atomic: readers never see a
    partial file).

    Returns:
        the sha256 hex digest of the written file (the value to put in the model card).

    Raises:
        WeightsError: duplicate variable paths, or a finite weight too large for float16.
        OSError: the file cannot be written.
    """
    import keras

    path = Path(path)
    variables = _weight_variables(model)
    arrays: dict[str, np.ndarray] = {}
    n_params = 0
    for name, variable in variables.items():
        value = np.asarray(variable.numpy())
        n_params += int(value.size)
        if np.issubdtype(value.dtype, np.floating):
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


def _is_writable(folder: Path) -> bool:
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
        if _is_writable(dest.parent):
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
def _progress(total: int | None, desc: str) -> Any | None:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but optional here
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def _fetch_one(url: str, dest: Path, sha256: str, timeout: float, size: int | None) -> str | None:
    """Download ``url`` to ``dest`` via a temp file. Returns None on success, else why it failed.

    Never raises for network or checksum problems: a wrong digest is returned as a failure
    string starting with ``"sha256 mismatch"`` so the caller can try the next mirror.
    """
    if not url.lower().startswith(_URL_SCHEMES):
        return f"unsupported URL scheme (use {', '.join(_URL_SCHEMES)})"
    tmp: Path | None = None
    done = False
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        request = urllib.request.Request(url, headers={"User-Agent": "zoo-weights/1"})
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length_header = resp.headers.get("Content-Length")
            expected_length = (
                int(length_header) if length_header and length_header.isdigit() else None
            )
            if expected_length is not None and size is not None and expected_length != size:
                return f"server announces {expected_length} bytes, the card says {size}"
            bar = _progress(expected_length or size, dest.name)
            try:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            if expected_length is not None and received != expected_length:
                return (
                    f"transfer interrupted: received {received} of {expected_length} bytes "
                    "(Content-Length)"
                )
            if size is not None and received != size:
                return f"received {received} bytes, the card says {size}"
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            return f"sha256 mismatch: got {actual}, expected {sha256} ({received} bytes received)"
        publish(tmp, dest)
        done = True
        return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return f"cannot connect: {exc.reason}"
    except (http.client.HTTPException, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if not done and tmp is not None:
            tmp.unlink(missing_ok=True)


def download(
    url_or_urls: str | Sequence[str],
    dest: str | os.PathLike,
    sha256: str,
    *,
    timeout: float = 60,
    size: int | None = None,
    hint: str = "Check the network connection or pass a local copy with weights=...",
) -> Path:
    """Download a file to ``dest``, verifying its sha256; mirrors are tried in order.

    Args:
        url_or_urls: one URL or a list of mirror URLs (``http://``, ``https://`` or ``file://``).
        dest: the final file path; its folder is created if missing.
        sha256: the expected sha256 hex digest.
        timeout: socket timeout in seconds for each connection.
        size: optional expected size in bytes (checked against Content-Length and the bytes read).
        hint: the last sentence of the DownloadError message (what the user can do instead).

    Each attempt streams into a temporary file in ``dest``'s folder (with a tqdm progress bar
    when stderr is a terminal), checks the Content-Length when the server sends one and the
    sha256, and only then moves the file to ``dest`` with ``os.replace``. A failed attempt (HTTP
    error, connection reset, truncated transfer, wrong sha256) removes its temporary file and
    the next mirror is tried; a failed download never creates ``dest``.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        ChecksumError: bytes arrived from at least one mirror but none hashed to ``sha256``.
        DownloadError: every mirror failed otherwise (the message lists each URL and why).
    """
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    dest = Path(dest)
    expected = _normalise_sha256(sha256, str(dest))
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


# --- Keras 2 .h5 converter ----------------------------------------------------------------------
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


def _read_keras2_h5(h5_path: Path) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """``[(layer_name, [(weight_name, array), ...]), ...]`` for the layers that have weights."""
    import h5py

    try:
        fh = h5py.File(h5_path, "r")
    except OSError as exc:
        raise WeightsError(f"{h5_path}: not a readable HDF5 file ({exc})") from exc
    with fh:
        root = fh
        layer_names = _h5_str_list(root, "layer_names")
        if layer_names is None and "model_weights" in fh:
            root = fh["model_weights"]
            layer_names = _h5_str_list(root, "layer_names")
        if layer_names is None:
            raise WeightsError(
                f"{h5_path}: no 'layer_names' attribute at the root or in 'model_weights', so "
                "this is not a Keras 2 weights file"
            )
        layers = []
        for layer_name in layer_names:
            if layer_name not in root:
                raise WeightsError(f"{h5_path}: layer {layer_name!r} is listed but has no group")
            group = root[layer_name]
            weight_names = _h5_str_list(group, "weight_names") or []
            weights = []
            for weight_name in weight_names:
                if weight_name not in group:
                    raise WeightsError(
                        f"{h5_path}: layer {layer_name!r} lists weight {weight_name!r}, "
                        "which is not in the file"
                    )
                weights.append((weight_name, np.asarray(group[weight_name])))
            if weights:
                layers.append((layer_name, weights))
    return layers


def _short_weight_name(name: str) -> str:
    """``'conv2d_1/kernel:0'`` -> ``'kernel'``."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def convert_keras2_h5(model: Any, h5_path: str | os.PathLike, out_path: str | os.PathLike) -> str:
    """Load an authors' Keras 2 ``.h5`` weights file into ``model`` and save it in our format.

    Args:
        model: a built Keras 3 Functional model with the same architecture as the one the file
            was saved from (layer names may differ).
        h5_path: a Keras 2 weights file (``model.save_weights``: root attribute ``layer_names``)
            or full-model file (the same inside the ``model_weights`` group).
        out_path: the ``.npz`` file to write with :func:`save_weights`.

    The legacy layers that have weights, in file order, are matched to the model's layers that
    have weights, in ``model.layers`` order. Within a layer, weights are matched by short name
    (``kernel``, ``bias``, ``gamma``...) when both sides have the same names, else by order.
    Every legacy weight must be consumed and every model weight filled, with equal shapes; the
    model is only modified once everything matches.

    Returns:
        the sha256 hex digest of the written ``.npz``.

    Raises:
        WeightsError: not a Keras 2 file, different numbers of weighted layers or of weights in
            a layer, or a shape mismatch (the message names the legacy and the model weight).
    """
    h5_path = Path(h5_path)
    legacy = _read_keras2_h5(h5_path)
    model_layers = [layer for layer in model.layers if layer.weights]
    if len(legacy) != len(model_layers):
        raise WeightsError(
            f"{h5_path}: has {len(legacy)} layers with weights, the model has "
            f"{len(model_layers)} (file: {_short_list([n for n, _ in legacy])}; model: "
            f"{_short_list([layer.name for layer in model_layers])}); the file was saved from "
            "another architecture"
        )
    assignments: list[tuple[Any, np.ndarray]] = []
    consumed = 0
    for (legacy_name, legacy_weights), layer in zip(legacy, model_layers):
        variables = list(layer.weights)
        if len(legacy_weights) != len(variables):
            raise WeightsError(
                f"{h5_path}: layer {legacy_name!r} has {len(legacy_weights)} weights "
                f"({_short_list([w for w, _ in legacy_weights])}), but model layer "
                f"{layer.name!r} has {len(variables)} "
                f"({_short_list([v.path for v in variables])}); not every weight can be consumed"
            )
        legacy_short = [_short_weight_name(w) for w, _ in legacy_weights]
        model_short = [v.name for v in variables]
        if len(set(legacy_short)) == len(legacy_short) and set(legacy_short) == set(model_short):
            by_name = dict(zip(legacy_short, legacy_weights))
            pairs = [(by_name[v.name], v) for v in variables]
        else:
            pairs = list(zip(legacy_weights, variables))
        for (weight_name, array), variable in pairs:
            if tuple(array.shape) != tuple(variable.shape):
                raise WeightsError(
                    f"{h5_path}: weight {weight_name!r} of layer {legacy_name!r} has shape "
                    f"{tuple(array.shape)}, but model variable {variable.path!r} has shape "
                    f"{tuple(variable.shape)}; the file was saved from another architecture"
                )
            assignments.append((variable, array))
            consumed += 1
    n_legacy = sum(len(w) for _, w in legacy)
    n_model = len(model.weights)
    n_filled = len({id(variable) for variable, _ in assignments})
    if consumed != n_legacy or consumed != n_model or n_filled != n_model:
        raise WeightsError(
            f"{h5_path}: {consumed} weights matched, but the file has {n_legacy} and the model "
            f"{n_model}; not every weight was consumed or filled"
        )
    for variable, array in assignments:
        variable.assign(np.asarray(array).astype(variable.dtype))
    logger.info("converted %s (%d weights) -> %s", h5_path, consumed, out_path)
    return save_weights(model, out_path)


def convert_keras2_h5_files(
    build_fn: Callable[[], Any],
    h5_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    file_prefix: str = "",
) -> list[dict]:
    """Convert several Keras 2 ``.h5`` files (e.g. ensemble members) into our format.

    Args:
        build_fn: returns a fresh Keras 3 model of the right architecture (called once per file).
        h5_paths: the legacy files, in member order.
        out_dir: folder for the ``.npz`` files (created if missing).
        names: output file names; default ``member0.npz``, ``member1.npz``, ...
        file_prefix: prepended to each record's ``file`` (e.g. ``"wmh_ensemble/flair_t1"``).

    Returns:
        card-ready records ``{"file": ..., "sha256": ..., "size": ...}``, in ``h5_paths`` order.

    Raises:
        WeightsError: as :func:`convert_keras2_h5`, or if ``names`` has the wrong length.
    """
    out_dir = Path(out_dir)
    names = list(names) if names is not None else [f"member{i}.npz" for i in range(len(h5_paths))]
    if len(names) != len(h5_paths) or len(set(names)) != len(names):
        raise WeightsError(
            f"{len(h5_paths)} .h5 files need as many distinct output names, got {names!r}"
        )
    records = []
    for h5_path, name in zip(h5_paths, names):
        out_path = out_dir / name
        digest = convert_keras2_h5(build_fn(), h5_path, out_path)
        rel = f"{file_prefix.strip('/')}/{name}" if file_prefix.strip("/") else name
        records.append({"file": rel, "sha256": digest, "size": out_path.stat().st_size})
    return records
