"""The authors' published weights as presets: ``zoo.load(name, variant=..., weights="upstream")``.

A card variant may carry an ``upstream`` record (schema ``$defs/upstream``)::

    upstream:
      format: keras2_h5                   # converter (zoo.converters.FORMATS)
      profiles: [antspynet, authors]      # preprocessing profiles these weights may run with;
                                          # the first is the default (card ``profiles``)
      licence: ...                        # the weights' licence as the authors state it
      files:                              # one per ensemble member, in member order
        - {member: 0, key: sysuMediaWmhFlairOnlyModel0,
           url: "https://ndownloader.figshare.com/files/22898441", sha256: null}

Flow of :func:`fetch` (also ``zoo fetch NAME --variant V --upstream [--from-dir PATH]``):

0. without ``source``, a conversion in the cache whose manifest matches the pinned or recorded
   digests is used as it is (the raw files are not needed again);
1. each upstream file comes from ``source`` (a folder holding one of the record's
   ``filenames``, ``<key>`` with one of the format's suffixes (``.h5``; ``.npz``,
   ``.safetensors``, ``.pt``), ``<key>`` or the URL's basename; or one file for a one-member
   variant), else the raw cache ``$ZOO_HOME/upstream/<entry>/`` (same names), else its URL
   through :func:`zoo.weights.download` (hidden staging file + ``os.replace``: an interrupted
   download leaves nothing at the final path and the next call resumes it with HTTP ``Range``;
   a read-only cache falls back to a temporary folder). Formats whose published files the zoo
   never downloads (the spine's fastai learner pickles) raise
   :class:`~zoo.errors.UpstreamExtractionRequiredError` with the extraction commands instead;
2. its digest (:func:`zoo.converters.source_digest`: the file's sha256, or for an extracted
   state_dict the sha256 of its arrays) is checked against the card's pinned ``sha256`` when
   there is one, else against the digest recorded in ``$ZOO_HOME/upstream/sha256.json`` on first
   sight (printed then); a different file raises :class:`~zoo.errors.UpstreamHashChangedError`;
3. the files are converted (:func:`zoo.converters.convert_files`, float32 storage, the network
   built as the variant's default upstream profile builds it: the spine's MONAI graph) into
   ``$ZOO_HOME/weights/<entry>/<variant>/upstream/member{i}.npz`` with a ``upstream.json``
   manifest (upstream and converted digests); a manifest that matches is reused.

:func:`choose_profile` enforces the card's pairing of weights and preprocessing profiles.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from zoo import errors
from zoo import weights as weights_mod
from zoo.card import ModelCard
from zoo.io import atomic_write_text

log = logging.getLogger(__name__)

UPSTREAM = "upstream"
#: Weight kinds that a profile's ``weights`` list can name.
WEIGHT_KINDS = ("card", "upstream", "own", "untrained")
MANIFEST = "upstream.json"

__all__ = ["UPSTREAM", "choose_profile", "fetch", "manifest_checksums", "upstream_record",
           "weights_kind"]


# --- records -----------------------------------------------------------------------------------
def upstream_record(card: ModelCard, variant: str | None) -> dict:
    """The ``upstream`` record of ``variant`` (default variant if None).

    Raises:
        UnknownVariantError: no such variant.
        WeightsNotAvailableError: the variant has no upstream weights (names those that have).
    """
    rec = card.variant(variant).get(UPSTREAM)
    if not rec:
        having = [v for v, r in card["variants"].items() if r.get(UPSTREAM)]
        raise errors.WeightsNotAvailableError(
            f"{card.id} variant {variant or card['default_variant']!r} has no upstream (authors') "
            f"weights preset" + (f"; variants with one: {having}" if having else
                                 "; no variant of this entry has one"))
    return rec


def weights_kind(weights: Any, default_sentinel: str = "default") -> str:
    """``"upstream"``, ``"card"`` (the card's own weights), ``"untrained"`` or ``"own"`` (an
    explicit folder, file, list or URL) for a ``zoo.load(weights=...)`` value."""
    if weights is None:
        return "untrained"
    if isinstance(weights, str) and weights == UPSTREAM:
        return "upstream"
    if isinstance(weights, str) and weights == default_sentinel:
        return "card"
    return "own"


def choose_profile(card: ModelCard, variant: str | None, kind: str, profile: str | None) -> str | None:
    """The preprocessing profile for weights of ``kind`` (see :func:`weights_kind`).

    The card's ``profiles`` name the weights each profile belongs to (``weights: [card]`` for the
    zoo's own, ``[upstream]`` for the authors'); a variant's ``upstream.profiles`` lists the
    profiles its authors' weights may run with, the first being the default. ``None`` means
    the card's own sections unchanged.

    Raises:
        ProfileMismatchError: ``profile`` is unknown, or does not belong to these weights (e.g.
            the upstream weights with the zoo's profile, or the zoo's weights with a reference
            profile); the message says which profile belongs to which weights.
    """
    profiles = card.data.get("profiles") or {}
    if profile is not None and profile not in profiles:
        raise errors.ProfileMismatchError(
            f"{card.id}: unknown preprocessing profile {profile!r}; the card defines "
            f"{sorted(profiles) or 'none'}")
    if kind == "upstream":
        allowed = list(upstream_record(card, variant).get("profiles") or [])
        if not allowed:
            raise errors.CardError(f"{card.id}: the upstream record of {variant!r} names no profile")
    else:
        allowed = [name for name, p in profiles.items() if kind in (p.get("weights") or [])]
        if kind in ("own", "untrained"):
            allowed = list(profiles)  # your own weights: any profile, default the card's sections
    if profile is None:
        return allowed[0] if kind == "upstream" else None
    if profile not in allowed:
        owners = "; ".join(f"{name}: {', '.join(p.get('weights') or [])}" for name, p in profiles.items())
        raise errors.ProfileMismatchError(
            f"{card.id}: profile {profile!r} does not belong to the {kind} weights of variant "
            f"{variant or card['default_variant']!r} (they run with {allowed or 'the card defaults'}); "
            f"profiles and their weights: {owners}. Load weights='upstream' for the authors' "
            "weights with their reference profile, or the default weights with the zoo profile")
    return profile


# --- recorded digests ------------------------------------------------------------------------------
def _records_path() -> Path:
    return weights_mod.zoo_home() / UPSTREAM / "sha256.json"


def _read_records() -> dict[str, dict]:
    path = _records_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise errors.WeightsError(f"{path}: unreadable record of upstream sha256 digests ({exc}); "
                                  "fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def _record_key(file_rec: dict, kind: str) -> str:
    """The key of a file's digest in ``sha256.json``: its URL, plus ``#content`` for a content
    digest (an extracted state_dict: not the bytes at the URL)."""
    return str(file_rec["url"]) + ("" if kind == "file" else f"#{kind}")


def _record_digest(file_rec: dict, kind: str, digest: str, size: int, say: Callable[[str], None]) -> None:
    key, url = str(file_rec["key"]), str(file_rec["url"])
    records = _read_records()
    records[_record_key(file_rec, kind)] = {
        "key": key, "sha256": digest, "size": size, "digest_of": kind,
        "recorded": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    path = _records_path()
    try:
        atomic_write_text(path, json.dumps(records, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("cannot write %s (%s); the digest of %s is not kept", path, exc, key)
    what = f"{url}, {size} bytes" if kind == "file" else \
        f"the state_dict extracted from {url}: sha256 of its arrays, whatever the container"
    say(f"recorded sha256 {digest} for {key} ({what}) in {path}")


def _expected_digest(file_rec: dict, kind: str) -> tuple[str | None, str]:
    """The digest a file must have (card pin, else the recorded one, else None) and its origin."""
    if file_rec.get("sha256"):
        return str(file_rec["sha256"]).lower(), "the model card"
    rec = _read_records().get(_record_key(file_rec, kind))
    if rec and rec.get("sha256"):
        return str(rec["sha256"]).lower(), f"{_records_path()} (first seen {rec.get('recorded', '?')})"
    return None, ""


def _check_digest(path: Path, file_rec: dict, fmt: str, say: Callable[[str], None]) -> str:
    """Digest of ``path`` (:func:`zoo.converters.source_digest`); checked against the expected
    digest, or recorded if there is none.

    Raises:
        UpstreamHashChangedError: the digest differs from the pinned or recorded one.
        ConversionError: the converter cannot read the file (e.g. a fastai learner pickle).
    """
    from zoo import converters

    digest, kind = converters.source_digest(fmt, path)
    expected, origin = _expected_digest(file_rec, kind)
    if expected is None:
        _record_digest(file_rec, kind, digest, path.stat().st_size, say)
    elif digest != expected:
        what = "sha256" if kind == "file" else "sha256 of the state_dict's arrays"
        raise errors.UpstreamHashChangedError(
            f"{path}: {what} {digest} differs from {expected} recorded for {file_rec['key']} "
            f"({file_rec['url']}) in {origin}. The published file changed, or this is another "
            "file; it was not used. If the authors republished their weights on purpose, delete "
            f"its entry from {_records_path()} and fetch again")
    return digest


# --- finding the raw files ----------------------------------------------------------------------------
def _candidates(source: Path, file_rec: dict, fmt: str) -> list[Path]:
    """Names an upstream file may have in a folder, in search order: the card's ``filenames``,
    the key with each of the format's suffixes, the bare key, the URL's last part."""
    from zoo import converters

    key = str(file_rec["key"])
    url_name = Path(urllib.parse.urlparse(str(file_rec["url"])).path).name
    names = [*(file_rec.get("filenames") or []), *(key + sfx for sfx in converters.source_suffixes(fmt)), key,
             url_name]
    return [source / n for n in dict.fromkeys(n for n in names if n)]


def _url(file_rec: dict, mirror: str | None) -> str:
    """The file's URL, or its last path part appended to ``mirror`` (a local copy of the host)."""
    if not mirror:
        return str(file_rec["url"])
    name = Path(urllib.parse.urlparse(str(file_rec["url"])).path).name
    return mirror.rstrip("/") + "/" + urllib.parse.quote(name)


def _raw_cache(entry: str) -> Path:
    return weights_mod.zoo_home() / UPSTREAM / entry


def _cached_raw(entry: str, file_rec: dict, fmt: str) -> Path | None:
    return next((p for p in _candidates(_raw_cache(entry), file_rec, fmt) if p.is_file()), None)


def _extraction_required(card: ModelCard, variant: str, rec: dict, files: list[dict]) -> errors.ZooError:
    """The error for an online fetch of files the zoo never downloads (fastai pickles)."""
    from zoo import converters

    urls = [urllib.parse.urlparse(str(f["url"])) for f in files]
    names = [Path(u.path).name for u in urls]
    repo = "/".join(urls[0].path.strip("/").split("/")[:2])
    revision = str(rec.get("revision") or "main")
    how = converters.module_for(str(rec["format"])).extraction_instructions(
        names, local=False, repo=repo, revision=revision, entry=card.id)
    return errors.UpstreamExtractionRequiredError(
        f"{card.id} variant {variant}: the authors publish their weights as {', '.join(names)} "
        f"({urls[0].scheme}://{urls[0].netloc}/{repo}, revision {revision}), pickled fastai learners that the "
        f"zoo never downloads or unpickles; nothing was downloaded. Extract their state_dicts once, {how}")


def _raw_file(entry: str, file_rec: dict, fmt: str, source: Path | None, n_files: int,
              say: Callable[[str], None], mirror: str | None = None) -> tuple[Path, str]:
    key = str(file_rec["key"])
    if source is not None:
        if source.is_file():
            if n_files != 1:
                raise errors.WeightsError(
                    f"{source}: a single file was given but the preset has {n_files} upstream "
                    "files; pass the folder holding them")
            return source, _check_digest(source, file_rec, fmt, say)
        for candidate in _candidates(source, file_rec, fmt):
            if candidate.is_file():
                return candidate, _check_digest(candidate, file_rec, fmt, say)
        raise errors.WeightsNotAvailableError(
            f"{source}: holds none of {[p.name for p in _candidates(source, file_rec, fmt)]} for "
            f"upstream file {key} ({file_rec['url']})")
    from zoo import converters

    cached = _cached_raw(entry, file_rec, fmt)
    if cached is not None:
        return cached, _check_digest(cached, file_rec, fmt, say)
    expected, _ = _expected_digest(file_rec, converters.digest_kind(fmt))
    name = key + converters.source_suffixes(fmt)[0]
    folder = _raw_cache(entry)
    dest = (folder if weights_mod.is_writable_dir(folder) else Path(tempfile.mkdtemp(prefix="zoo-upstream-"))) / name
    url = _url(file_rec, mirror)
    say(f"downloading {key} from {url}")
    try:
        weights_mod.download(url, dest, expected,
                             hint=f"An interrupted download resumes when the command is run again. Offline: put the file in a "
                                  f"folder and run zoo fetch {entry} --upstream --from-dir FOLDER")
    except errors.ChecksumError as exc:
        raise errors.UpstreamHashChangedError(
            f"{key}: the file at {url} no longer has the sha256 {expected} recorded on "
            f"first download; nothing was written ({exc})") from exc
    return dest, _check_digest(dest, file_rec, fmt, say)


# --- fetch + convert ------------------------------------------------------------------------------
def converted_dir(entry: str, variant: str) -> Path:
    """Where the converted upstream weights of ``entry``/``variant`` live (below the cache)."""
    return weights_mod.cache_dir() / entry / variant / UPSTREAM


def manifest_checksums(folder: Path, n: int) -> list[str]:
    """The converted files' sha256 from ``folder/upstream.json`` (member order)."""
    data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    return [m["sha256"] for m in data["members"]][:n]


def fetch(entry: str, variant: str | None = None, source: str | os.PathLike | None = None, *,
          mirror: str | None = None, build_fn: Callable[[int], Any] | None = None,
          say: Callable[[str], None] | None = None) -> tuple[list[Path], list[str]]:
    """Get the authors' weights of ``entry``/``variant``, verified and converted (module docstring).

    Args:
        entry: entry id; variant: its variant (default: the card's default).
        source: a local folder (or one file) holding the upstream files (offline); default: the
            raw cache, then the URLs.
        mirror: a URL prefix serving the files under the last part of their card URL (an
            institutional copy of the host); digests stay keyed by the card URL.
        build_fn: ``member -> keras.Model`` (default: the entry's ``build_member``).
        say: where progress lines go (default: the log at INFO level); the CLI prints them.
    Returns:
        ``(paths, sha256s)`` of the converted ``member{i}.npz`` files, in member order.
    Raises:
        WeightsNotAvailableError: no upstream preset, or a file found nowhere.
        UpstreamExtractionRequiredError: online, for files the zoo never downloads (fastai
            learner pickles): the message gives the extraction commands and ``--from-dir``.
        UpstreamHashChangedError: a file differs from its pinned or recorded sha256.
        DownloadError: the download failed (nothing written).
        ConversionError: the file does not fit the architecture (nothing written).
    """
    import importlib

    from zoo import converters, registry

    say = say or log.info
    card = registry.card(entry)
    variant = variant or card["default_variant"]
    rec = upstream_record(card, variant)
    fmt = str(rec["format"])
    files = sorted(rec["files"], key=lambda f: int(f.get("member", 0)))
    src = None if source is None else Path(source).expanduser()
    if src is not None and not src.exists():
        raise errors.WeightsNotAvailableError(f"{src}: the upstream weights folder or file does not exist")
    out = converted_dir(entry, variant)
    names = [f"member{i}.npz" for i in range(len(files))]
    if src is None:  # a conversion of the recorded (or pinned) upstream files is enough
        known = [_expected_digest(f, converters.digest_kind(fmt))[0] for f in files]
        if all(known):
            reused = _reuse(out, names, known, fmt)
            if reused is not None:
                return [out / n for n in names], reused
        if not converters.published_files_convertible(fmt) and \
                any(_cached_raw(entry, f, fmt) is None for f in files):
            raise _extraction_required(card, variant, rec, files)
    raws = [_raw_file(entry, f, fmt, src, len(files), say, mirror) for f in files]
    upstream_digests = [d for _, d in raws]
    reused = _reuse(out, names, upstream_digests, fmt)
    if reused is not None:
        return [out / n for n in names], reused
    if not weights_mod.is_writable_dir(out):
        out = Path(tempfile.mkdtemp(prefix="zoo-upstream-converted-"))
        log.warning("weights cache not writable; converting into %s", out)
    if build_fn is None:  # the network as the upstream weights' default profile builds it
        module = importlib.import_module(registry.ENTRIES[entry])  # (spine: the MONAI graph)
        profiled = card.with_profile(choose_profile(card, variant, "upstream", None))
        build_fn = lambda member: module.build_member(profiled, variant, member)  # noqa: E731
    counter = iter(range(len(files)))
    records = converters.convert_files(fmt, lambda: build_fn(next(counter)), [p for p, _ in raws], out,
                                       names=names, file_prefix=f"{entry}/{variant}/{UPSTREAM}",
                                       storage="float32")
    manifest = {"entry": entry, "variant": variant, "format": fmt, "storage": "float32",
                "members": [{"file": n, "sha256": r["sha256"], "size": r["size"],
                             "key": f["key"], "url": f["url"], "upstream_sha256": d}
                            for n, r, f, d in zip(names, records, files, upstream_digests)]}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    for n, r in zip(names, records):
        say(f"converted {entry}/{variant} {n} (sha256 {r['sha256']}) -> {out / n}")
    return [out / n for n in names], [r["sha256"] for r in records]


def _reuse(out: Path, names: list[str], upstream_digests: list[str], fmt: str) -> list[str] | None:
    """The converted digests if ``out`` holds a conversion of exactly these upstream files."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        members = data["members"]
        if data.get("format") != fmt or [m["upstream_sha256"] for m in members] != upstream_digests:
            return None
        digests = [m["sha256"] for m in members]
        if [m["file"] for m in members] != names:
            return None
        if any(weights_mod.sha256_file(out / n) != d for n, d in zip(names, digests)):
            return None
        return digests
    except (OSError, ValueError, KeyError, TypeError):
        return None
