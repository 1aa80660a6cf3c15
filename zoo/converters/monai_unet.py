"""MONAI ``UNet`` state_dict (the authors' PyTorch weights) -> the zoo's residual 3D U-Net.

Source: the three fastMONAI learners of Kaliyugarasan et al. (ISBI 2023), Hugging Face
``skaliy/spine-segmentation`` (``0_learner.pkl`` .. ``2_learner.pkl``), hold a MONAI
``UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
strides=(2, 2, 2, 2), num_res_units=2)``. The learners are fastai pickles, which the zoo never
unpickles (not even downloads: :data:`PUBLISHED_FILES_CONVERTIBLE` is False). A user extracts the
plain state_dict once in a fastMONAI environment (:func:`extraction_instructions`: three lines
per learner, ``load_learner(...)`` then ``np.savez(...)``) and gives the zoo one of:

- ``.npz``: the state_dict's arrays keyed by MONAI names (``np.savez``; read with
  ``allow_pickle=False``, needs neither torch nor safetensors);
- ``.safetensors`` (the ``safetensors`` package's numpy API, no torch needed);
- ``.pt`` / ``.pth`` (``torch.save(learn.model.state_dict(), ...)``, read with
  ``torch.load(weights_only=True)``; torch is an optional dependency used only here);
- or a mapping of numpy arrays.

The digest recorded for such a file (:func:`source_digest`) is the sha256 of the state_dict's
content (names, shapes, float32 values), not of the container: the same weights extracted twice,
or saved as ``.npz`` once and ``.pt`` once, give the same digest (``np.savez`` stamps the time
into its zip entries, so its bytes differ between runs), and other weights a different one.

Naming (MONAI 1.x, checked by instantiating ``monai.networks.nets.UNet``): the network is nested
``SkipConnection`` blocks. With ``P(0) = "model"`` and ``P(l) = P(l-1) + ".1.submodule"``, the
encoder residual unit of level ``l`` (0-based) is ``P(l).0``, the decoder (up) block
``P(l).2`` and the bottom residual unit ``P(L)`` (``L`` = number of strides). A residual unit
holds ``.conv.unit{i}.conv.{weight,bias}``, the PReLU ``.conv.unit{i}.adn.A.weight`` (absent for
the output head's conv-only unit) and ``.residual.{weight,bias}`` (absent for an identity
residual); an up block holds the transposed convolution ``.0.conv.{weight,bias}`` with its PReLU
``.0.adn.A.weight`` and a one-unit residual unit ``.1``. Instance norm has no parameters.

Axes. MONAI tensors are ``(B, C, D, H, W)`` where ``(D, H, W)`` are the voxel axes of the array
fed in: with fastMONAI's ``ToCanonical`` these are the RAS+ ``(X, Y, Z)`` axes, exactly the
zoo's ``(X, Y, Z)`` network grid, so no spatial axis is permuted; only the channel axis moves
last (Keras channels-last ``(B, X, Y, Z, C)``). Kernels: ``Conv3d`` ``(out, in, D, H, W)`` ->
Keras ``Conv3D`` ``(D, H, W, in, out)``; ``ConvTranspose3d`` ``(in, out, D, H, W)`` -> Keras
``Conv3DTranspose`` ``(D, H, W, out, in)``; both are ``transpose(2, 3, 4, 1, 0)`` and no kernel is
flipped (both libraries compute the same cross-correlation / its adjoint). The one-parameter
PReLU ``(1,)`` fills Keras' ``(1, 1, 1, 1)`` alpha.

The converted weights reproduce MONAI only in the builder's ``padding="pytorch"`` graph
(:func:`zoo.architectures.resunet3d.build_resunet3d`, spec ``spine_vertebrae.md`` §14): Keras
``'same'`` pads a stride-2 convolution 0/1 voxels and keeps the other end of the transposed
convolution's output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ConversionError

__all__ = ["PUBLISHED_FILES_CONVERTIBLE", "SOURCE_SUFFIXES", "convert_files", "convert_state_dict",
           "expected_layout", "extraction_instructions", "keras_arrays", "read_state_dict",
           "seeded_state_dict", "source_digest"]

#: File endings of an extracted state_dict, in the order a folder is searched for each member.
SOURCE_SUFFIXES = (".npz", ".safetensors", ".pt", ".pth")
#: The published files (fastai learner pickles) are never downloaded or converted by the zoo.
PUBLISHED_FILES_CONVERTIBLE = False
#: Hugging Face repository of the authors' learners (issue 15; Kaliyugarasan et al., ISBI 2023).
HF_REPO = "skaliy/spine-segmentation"

#: spec ``spine_vertebrae.md`` §5 (MONAI ``UNet`` arguments of the released spine models).
SPINE_CONFIG = dict(in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                    num_res_units=2)

#: What a MONAI weight becomes: (Keras layer name, Keras weight kind, role), role = "conv" |
#: "convT" | "prelu" | "bias".
Target = tuple[str, str, str]


def _prefix(level: int) -> str:
    return "model" + ".1.submodule" * level


def _residual_unit_keys(key: str, layer: str, c_in: int, c_out: int, stride: int, subunits: int,
                        last_conv_only: bool, kernel_in: int = 3) -> dict[str, tuple[Target, tuple[int, ...]]]:
    out: dict[str, tuple[Target, tuple[int, ...]]] = {}
    cin = c_in
    for i in range(subunits):
        conv = f"{layer}_conv{i}"
        out[f"{key}.conv.unit{i}.conv.weight"] = ((conv, "kernel", "conv"), (c_out, cin, 3, 3, 3))
        out[f"{key}.conv.unit{i}.conv.bias"] = ((conv, "bias", "bias"), (c_out,))
        if not (last_conv_only and i == subunits - 1):
            out[f"{key}.conv.unit{i}.adn.A.weight"] = ((f"{layer}_unit{i}_prelu", "alpha", "prelu"), (1,))
        cin = c_out
    if stride != 1 or c_in != c_out:
        k = 3 if stride != 1 else 1
        out[f"{key}.residual.weight"] = ((f"{layer}_residual", "kernel", "conv"), (c_out, c_in, k, k, k))
        out[f"{key}.residual.bias"] = ((f"{layer}_residual", "bias", "bias"), (c_out,))
    return out


def expected_layout(in_channels: int = 1, out_channels: int = 2, channels: Sequence[int] = SPINE_CONFIG["channels"],
                    strides: Sequence[int] = SPINE_CONFIG["strides"], num_res_units: int = 2
                    ) -> dict[str, tuple[Target, tuple[int, ...]]]:
    """Every weight of a MONAI ``UNet(spatial_dims=3, ...)`` with residual units, in MONAI's
    state_dict order, and where it goes in :func:`~zoo.architectures.resunet3d.build_resunet3d`.

    Args:
        in_channels, out_channels, channels, strides, num_res_units: the MONAI ``UNet``
            arguments (kernel 3, up-kernel 3, instance norm, PReLU: MONAI defaults).
    Returns:
        ``{monai_key: ((keras_layer, "kernel" | "bias" | "alpha", role), monai_shape)}``.
    Raises:
        ConversionError: ``num_res_units`` < 1 or ``len(strides) != len(channels) - 1`` (other
            MONAI configurations are not what the zoo builds).
    """
    channels, strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
    if num_res_units < 1 or len(strides) != len(channels) - 1:
        raise ConversionError(f"MONAI UNet with channels {channels}, strides {strides}, num_res_units "
                              f"{num_res_units} is not a residual U-Net the zoo builds")
    depth = len(strides)
    out: dict[str, tuple[Target, tuple[int, ...]]] = {}
    ins = [in_channels, *channels[:-2]]
    ups_out = [out_channels, *channels[:-2]]
    for level in range(depth):  # MONAI order: down block, (nested block), up block
        out.update(_residual_unit_keys(f"{_prefix(level)}.0", f"down{level + 1}", ins[level], channels[level],
                                       strides[level], num_res_units, False))
    out.update(_residual_unit_keys(_prefix(depth), "bottom", channels[-2], channels[-1], 1, num_res_units, False))
    for level in range(depth - 1, -1, -1):
        key, layer = f"{_prefix(level)}.2", f"up{level + 1}"
        deeper = channels[-1] if level == depth - 1 else ups_out[level + 1]
        c_in, c_out = channels[level] + deeper, ups_out[level]
        out[f"{key}.0.conv.weight"] = ((f"{layer}_convT", "kernel", "convT"), (c_in, c_out, 3, 3, 3))
        out[f"{key}.0.conv.bias"] = ((f"{layer}_convT", "bias", "bias"), (c_out,))
        out[f"{key}.0.adn.A.weight"] = ((f"{layer}_up_prelu", "alpha", "prelu"), (1,))
        out.update(_residual_unit_keys(f"{key}.1", f"{layer}_ru", c_out, c_out, 1, 1, level == 0))
    return out


def seeded_state_dict(seed: int, **config: Any) -> dict[str, np.ndarray]:
    """Seeded random weights in MONAI's state_dict layout: the spine parity fixture's weights.

    ``tools/make_spine_parity_fixture.py`` loads them into the reference MONAI ``UNet`` (torch)
    and the CI test converts them with this module, so both sides hold the same numbers without
    a 19 MB weights file in the repository. Procedure: numpy ``default_rng(seed)``, one stream,
    keys in :func:`expected_layout` order (MONAI's state_dict order), drawn in float64 and stored
    as float32: a (transposed) convolution kernel from ``N(0, 2 / fan_in)``, ``fan_in`` = input
    channels x 27 (He et al. 2015); a bias from ``N(0, 0.05**2)``; a PReLU slope from
    ``U(0.05, 0.45)`` (distinct per layer, so a misplaced slope changes the output).

    Args:
        seed: the ``default_rng`` seed.
        config: MONAI ``UNet`` arguments (default: the spine spec's).
    Returns:
        ``{monai_key: float32 array}`` of MONAI's shapes.
    """
    rng = np.random.default_rng(int(seed))
    out = {}
    for key, ((_, _, role), shape) in expected_layout(**{**SPINE_CONFIG, **config}).items():
        if role in ("conv", "convT"):
            c_in = shape[1] if role == "conv" else shape[0]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / (c_in * int(np.prod(shape[2:]))))
        elif role == "prelu":
            value = rng.uniform(0.05, 0.45, size=shape)
        else:
            value = rng.standard_normal(shape) * 0.05
        out[key] = value.astype(np.float32)
    return out


def extraction_instructions(learners: Sequence[str] = ("0_learner.pkl", "1_learner.pkl", "2_learner.pkl"), *,
                            local: bool = False, repo: str = HF_REPO, revision: str = "main",
                            entry: str = "spine_vertebrae") -> str:
    """The commands a user runs once, outside the zoo, to turn the published fastai learners
    into the ``.npz`` state_dicts this module reads (the zoo never unpickles a learner).

    Args:
        learners: the learner file names (``"0_learner.pkl"`` -> ``"0.npz"``: the part before
            the first ``_``).
        local: the learners are already on disk (no download line).
        repo, revision: the Hugging Face repository and revision holding them.
        entry: the zoo entry whose ``zoo fetch`` line ends the instructions.
    Returns:
        one paragraph with the commands (a download with ``huggingface-cli``, then per learner
        three Python lines in a fastMONAI environment, then ``zoo fetch``).
    """
    outs = [Path(n).stem.split("_")[0] + ".npz" for n in learners]
    steps = [] if local else [
        f"huggingface-cli download {repo} {' '.join(learners)} --revision {revision} --local-dir ."]
    for learner, out in zip(learners, outs):
        steps.append(
            "python -c \"from fastMONAI.vision_all import load_learner; import numpy as np; "
            f"learn = load_learner('{learner}', cpu=True); "
            f"np.savez('{out}', **{{k: v.numpy() for k, v in learn.model.state_dict().items()}})\"")
    steps.append(f"zoo fetch {entry} --upstream --from-dir FOLDER (the folder holding {', '.join(outs)})")
    return ("in a Python environment with fastMONAI (pip install fastMONAI huggingface_hub; a throwaway "
            "one, not the zoo's), run: " + " ; ".join(steps))


def _read_npz_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` state_dict (``np.savez`` of ``{key: tensor.numpy()}``), never
    unpickled."""
    from zoo.weights import META_KEY

    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ConversionError(f"{path}: holds a single array, not a state_dict .npz")
            if META_KEY in npz.files:
                raise ConversionError(
                    f"{path}: a zoo weights file (already converted, it has {META_KEY!r}), not a MONAI "
                    "state_dict; load it with zoo.load(..., weights=FOLDER) instead")
            return {key: npz[key] for key in npz.files}
    except ConversionError:
        raise
    except ValueError as exc:  # object arrays: refused by allow_pickle=False
        raise ConversionError(f"{path}: holds pickled or object arrays ({exc}); the zoo reads plain numeric "
                              "arrays only (np.savez of tensor.numpy() values)") from exc
    except Exception as exc:  # noqa: BLE001 - zipfile/OSError/EOF of a foreign or truncated file
        raise ConversionError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc


def source_digest(source: str | os.PathLike) -> str:
    """sha256 of a state_dict's content, independent of its container (.npz, .safetensors, .pt).

    Digest: for each key in sorted order (after removing a wrapper prefix such as ``module.``),
    the UTF-8 key, a NUL byte, the shape as text, a NUL byte, then the float32 little-endian
    C-order values. Equal for the same weights saved twice (``np.savez`` bytes are not: its zip
    entries carry the time); different for other weights.

    Raises:
        ConversionError: as :func:`read_state_dict`.
    """
    import hashlib

    state = _strip_prefix(read_state_dict(source), expected_layout(**SPINE_CONFIG))
    digest = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key], dtype="<f4")
        digest.update(key.encode("utf-8") + b"\0" + str(arr.shape).encode("ascii") + b"\0")
        digest.update(arr.tobytes())
    return digest.hexdigest()


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A MONAI state_dict as float32 numpy arrays.

    Args:
        source: an ``.npz`` file of the arrays keyed by MONAI names (``allow_pickle=False``;
            needs neither torch nor safetensors), a ``.pt`` / ``.pth`` file
            (``torch.load(..., weights_only=True)``: no pickled code is run; needs torch), a
            ``.safetensors`` file (needs ``safetensors``), or a mapping of arrays / tensors. A
            ``.pkl`` (the published fastai learner) is refused before it is opened, with the
            extraction to run instead (:func:`extraction_instructions`). A
            ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.
    Returns:
        ``{key: float32 array}`` (keys as stored; see :func:`convert_state_dict` for prefixes).
    Raises:
        ConversionError: the file is missing, unreadable or a ``.pkl``, an optional dependency
            is missing, or the content is not a mapping of numeric arrays.
    """
    if isinstance(source, Mapping):
        raw, name = dict(source), "state_dict"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConversionError(f"{path}: file not found")
        if path.suffix == ".pkl":
            raise ConversionError(
                f"{path}: a pickled fastai learner; the zoo never unpickles these. Extract its state_dict "
                "once where fastMONAI is installed, then give the zoo the .npz: "
                + extraction_instructions([path.name], local=True))
        if path.suffix == ".npz":
            raw = _read_npz_state_dict(path)
        elif path.suffix == ".safetensors":
            try:
                from safetensors.numpy import load_file
            except ImportError as exc:
                raise ConversionError(f"{path}: reading .safetensors needs the 'safetensors' package "
                                      "(pip install safetensors)") from exc
            try:
                raw = load_file(str(path))
            except Exception as exc:  # noqa: BLE001 - any parse failure of the foreign file
                raise ConversionError(f"{path}: not a readable safetensors file ({exc})") from exc
        else:
            try:
                import torch
            except ImportError as exc:
                raise ConversionError(
                    f"{path}: reading a PyTorch .pt file needs torch (pip install torch, the optional "
                    "extra 'torch'), or save the state_dict as .safetensors") from exc
            try:
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
                raise ConversionError(
                    f"{path}: torch.load(weights_only=True) refused or failed ({type(exc).__name__}: {exc}); "
                    "give the plain state_dict (torch.save(learn.model.state_dict(), ...)), not a pickled "
                    "learner or model") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(raw, Mapping) and set(raw) == {wrapper} and isinstance(raw[wrapper], Mapping):
            raw = dict(raw[wrapper])
    if not isinstance(raw, Mapping):
        raise ConversionError(f"{name}: holds a {type(raw).__name__}, not a state_dict (a mapping of tensors)")
    out = {}
    for key, value in raw.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().float().numpy()
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.number):
            raise ConversionError(f"{name}: entry {key!r} is {arr.dtype}, not a numeric array")
        out[str(key)] = arr.astype(np.float32)
    return out


def _strip_prefix(state: dict[str, np.ndarray], layout: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Remove one common key prefix (e.g. ``module.`` of DataParallel) that sits before
    MONAI's ``model.`` keys, so wrapped models convert too."""
    anchor = next(iter(layout))
    if anchor in state:
        return state
    hits = [k[: -len(anchor)] for k in state if k.endswith("." + anchor)]
    if len(hits) == 1 and all(k.startswith(hits[0]) for k in state):
        return {k[len(hits[0]):]: v for k, v in state.items()}
    return state


def keras_arrays(state: Mapping[str, np.ndarray], model: Any, *, source: str = "state_dict",
                 **config: Any) -> dict[tuple[str, str], np.ndarray]:
    """Map a MONAI state_dict onto ``model``'s weights, checking every key and shape first.

    Args:
        state: ``{monai_key: array}`` (:func:`read_state_dict`).
        model: a Keras model from ``build_resunet3d`` (any ``padding``; use ``"pytorch"`` to
            reproduce MONAI's outputs).
        source: name of the input for messages.
        config: MONAI ``UNet`` arguments (:func:`expected_layout`; default the spine spec's).
    Returns:
        ``{(layer_name, weight_kind): array}`` in Keras layout, one per model weight.
    Raises:
        ConversionError: a MONAI key is missing, unexpected or of the wrong shape, or the model
            lacks a layer the layout needs, or has weights the layout does not fill; the message
            names the MONAI key, the Keras layer and both shapes.
    """
    layout = expected_layout(**{**SPINE_CONFIG, **config})
    state = _strip_prefix(dict(state), layout)
    missing = [k for k in layout if k not in state]
    unexpected = [k for k in state if k not in layout]
    if missing or unexpected:
        parts = []
        if missing:
            k = missing[0]
            parts.append(f"{len(missing)} MONAI weight(s) missing, first {k!r} (for Keras layer "
                         f"{layout[k][0][0]!r}, MONAI shape {layout[k][1]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r} "
                         f"{tuple(np.shape(state[unexpected[0]]))}")
        raise ConversionError(f"{source}: not the state_dict of a MONAI UNet with "
                              f"{_describe(config)}: " + "; ".join(parts))
    by_layer = {layer.name: layer for layer in model.layers}
    out: dict[tuple[str, str], np.ndarray] = {}
    for key, ((layer_name, kind, role), monai_shape) in layout.items():
        arr = np.asarray(state[key], np.float32)
        layer = by_layer.get(layer_name)
        if layer is None:
            raise ConversionError(f"{source}: MONAI weight {key!r} {monai_shape} belongs to Keras layer "
                                  f"{layer_name!r}, which model {model.name!r} does not have")
        variable = {v.path.rsplit("/", 1)[-1]: v for v in layer.weights}.get(kind)
        keras_shape = tuple(int(s) for s in variable.shape) if variable is not None else None
        if tuple(arr.shape) != monai_shape:
            raise ConversionError(f"{source}: MONAI weight {key!r} has shape {tuple(arr.shape)}, expected "
                                  f"{monai_shape} for Keras layer {layer_name!r} {kind} {keras_shape}")
        if role in ("conv", "convT"):
            arr = np.transpose(arr, (2, 3, 4, 1, 0))
        elif role == "prelu":
            arr = arr.reshape(keras_shape if keras_shape is not None else arr.shape)
        if keras_shape is None or tuple(arr.shape) != keras_shape:
            raise ConversionError(f"{source}: MONAI weight {key!r} {tuple(state[key].shape)} -> Keras "
                                  f"{tuple(arr.shape)} does not fit layer {layer_name!r} {kind} {keras_shape}")
        out[(layer_name, kind)] = np.ascontiguousarray(arr)
    filled = {(lyr.name, v.path.rsplit("/", 1)[-1]) for lyr in model.layers for v in lyr.weights}
    left = sorted(filled - set(out))
    if left:
        raise ConversionError(f"{source}: model {model.name!r} weights {left[:4]} have no MONAI counterpart "
                              f"({_describe(config)}); build the model with the same configuration")
    return out


def _describe(config: Mapping[str, Any]) -> str:
    cfg = {**SPINE_CONFIG, **config}
    return ", ".join(f"{k}={tuple(v) if isinstance(v, (list, tuple)) else v}" for k, v in cfg.items())


def convert_state_dict(model: Any, source: str | os.PathLike | Mapping[str, Any], **config: Any) -> Any:
    """Load a MONAI ``UNet`` state_dict into ``model`` (all weights or none).

    Args:
        model: ``build_resunet3d(..., padding="pytorch")`` for outputs equal to MONAI's.
        source: as :func:`read_state_dict`.
        config: MONAI ``UNet`` arguments (default: the spine spec's).
    Returns:
        ``model`` with every weight assigned.
    Raises:
        ConversionError: as :func:`read_state_dict` and :func:`keras_arrays`; the model is left
            untouched.
    """
    name = "state_dict" if isinstance(source, Mapping) else str(source)
    arrays = keras_arrays(read_state_dict(source), model, source=name, **config)
    layers = {layer.name: layer for layer in model.layers}
    for (layer_name, kind), arr in arrays.items():
        variable = {v.path.rsplit("/", 1)[-1]: v for v in layers[layer_name].weights}[kind]
        variable.assign(arr.astype(variable.dtype))
    return model


def convert_files(build_fn: Callable[[], Any], sources: Sequence[str | os.PathLike | Mapping[str, Any]],
                  out_dir: str | os.PathLike, *, names: Sequence[str] | None = None, file_prefix: str = "",
                  storage: str = "float32", **config: Any) -> list[dict]:
    """Convert the state_dicts of several MONAI ``UNet`` members into zoo ``.npz`` files; all
    or nothing.

    Args:
        build_fn: returns a fresh Keras model (``build_resunet3d``), called once per source.
        sources: ``.npz`` / ``.safetensors`` / ``.pt`` files or array mappings, in member order.
        out_dir: folder of the output files (created if missing).
        names: output file names; default ``member0.npz``, ``member1.npz``, ...
        file_prefix: prepended to each record's ``file``.
        storage: ``"float32"`` (default: exactness over bytes) or ``"float16"``.
        config: MONAI ``UNet`` arguments (default: the spine spec's).
    Returns:
        card-ready records ``{"file", "sha256", "size"}`` in ``sources`` order.
    Raises:
        ConversionError: as :func:`convert_state_dict`, or ``names`` of the wrong length.
            Nothing is written to ``out_dir`` then (members are converted into a temporary
            folder inside it and moved into place only when all converted).
    """
    from zoo.converters import convert_all_or_nothing
    from zoo.weights import save_weights

    return convert_all_or_nothing(
        lambda source, path: save_weights(convert_state_dict(build_fn(), source, **config), path, storage=storage),
        sources, out_dir, names=names, file_prefix=file_prefix, what="state_dicts")
