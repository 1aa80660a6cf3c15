"""``spine_vertebrae``: vertebral bodies Th12-L5 in sagittal T2w MRI with a residual 3D U-Net
(Kaliyugarasan et al., ISBI 2023; spec ``specs/spine_vertebrae.md``).

How the shared pieces plug together; every number comes from the card
(``cards/spine_vertebrae.yaml``):

    T2w volume (I, J, K)
    -> VolumePipeline (card steps): reorient RAS+, resample 4.4 x 0.78 x 0.78 mm, z-score over
       all voxels, centred crop/pad to 16 x 400 x 400 (large_inputs crop, the spec default; with
       sliding_window larger volumes are only padded)                  -> (X, Y, Z) network grid
    -> sliding window of 16 x 400 x 400 (one window when the volume fits) over the fused members:
       mean of the members' logits, softmax (D4 logit_mean) or the majority vote of their masks
    -> foreground probability mapped back to the input grid (linear), > threshold
    -> 3D connected components (6-connectivity); components < 5.59 mL removed (D3); the
       remaining bodies named Th12..L5 from superior to inferior when there are six and none
       is a merge (> 2x the mean volume, spec §10.2), else body1..bodyN with a QC flag
    -> Prediction: "vertebral_bodies" (uint8 0/1), "vertebrae" (uint8 1..6 = Th12..L5),
       "vertebral_bodies_probability" (float32), volumes_ml per vertebra, on the input's grid
"""

from __future__ import annotations

import time
from typing import Sequence

import keras
import numpy as np

from zoo import errors, postprocessing
from zoo.architectures.resunet3d import build_resunet3d
from zoo.card import ModelCard
from zoo.inference.volume import probability_on_input_grid
from zoo.inference.sliding_window import sliding_window
from zoo.io import Volume
from zoo.prediction import Prediction
from zoo.preprocessing.volume_pipeline import VolumePipeline

ID = "spine_vertebrae"

#: Vertebra names from superior to inferior (spec §1).
VERTEBRAE = ("Th12", "L1", "L2", "L3", "L4", "L5")

#: Per-case metric columns of ``zoo evaluate`` (specs/metrics.md names): on the input grid
#: (post-processed) and, as the published numbers (spec §11, D5), on the network grid raw and
#: post-processed (``*_raw`` = before the component filter); n_bodies = predicted components;
#: then per-vertebra volumes (mL) of the reference and the prediction (NaN where the prediction
#: does not name six separate bodies), for the Bland–Altman analysis of :func:`aggregate`.
EVAL_COLUMNS = ("dsc", "hd95_mm", "n_bodies", "dsc_network_grid_raw", "dsc_network_grid",
                "hd_vox_network_grid_raw", "hd_vox_network_grid",
                *(f"volume_ml_{who}_{v}" for v in VERTEBRAE for who in ("ref", "pred")))


#: ``inference.graph`` -> builder arguments: the zoo's own weights ("zoo") or the authors'
#: MONAI weights converted by :mod:`zoo.converters.monai_unet` ("monai": PyTorch padding and the
#: precise instance norm, equal to MONAI within 1e-5 in probability).
GRAPHS = {"zoo": dict(padding="keras", norm="group"), "monai": dict(padding="pytorch", norm="staged")}


def build_member(card: ModelCard, variant: str, member: int, patch_size=None,
                 graph: str | None = None) -> keras.Model:
    """One untrained member of ``variant`` named ``member{member}``; ``patch_size``
    ``(D, H, W)`` builds it for training patches (same weights as the card's window).

    ``graph`` (:data:`GRAPHS`): ``"zoo"`` for the zoo's own weights, ``"monai"`` for the
    authors' converted MONAI weights. Default: the card's ``inference.graph`` (the upstream
    weights' preprocessing profile sets ``"monai"``), else ``"zoo"``. Both graphs hold the
    same weight variables.
    Raises:
        CardError: an unknown graph.
    """
    arch = card.variant(variant)["architecture"]
    shape = tuple(arch["input_shape"])
    if patch_size:
        shape = (*(int(s) for s in patch_size), shape[-1])
    graph = graph or str(card["inference"].get("graph", "zoo"))
    if graph not in GRAPHS:
        raise errors.CardError(f"{card.id}: inference.graph {graph!r} is not one of {sorted(GRAPHS)}")
    return build_resunet3d(shape, out_channels=int(arch["out_channels"]), channels=tuple(arch["channels"]),
                           strides=tuple(arch["strides"]), num_res_units=int(arch["num_res_units"]),
                           name=f"member{member}", **GRAPHS[graph])


def build_members(card: ModelCard, variant: str) -> list[keras.Model]:
    """The ensemble members of ``variant`` (untrained), ``inference.n_members`` of them."""
    return [build_member(card, variant, i) for i in range(int(card["inference"]["n_members"]))]


def pipeline(card: ModelCard, variant: str | None = None, large_inputs: str | None = None) -> VolumePipeline:
    """The card's invertible 3D preprocessing (:class:`VolumePipeline`); ``large_inputs``
    overrides the card's ``crop_pad.large_inputs`` (training keeps whole volumes with
    ``"sliding_window"``, i.e. pad only)."""
    return VolumePipeline(card["preprocessing"]["steps"], large_inputs=large_inputs)


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e[..., 1] / e.sum(axis=-1)).astype(np.float32)


def network_probability(model, x: np.ndarray) -> np.ndarray:
    """Foreground probability ``(X, Y, Z)`` of the network array ``x`` (``(X, Y, Z)`` z-scored,
    at least the window along each axis) with the card's ensemble rule and sliding window.

    ``logit_mean`` (D4 default): softmax of the mean of the members' logits (the fused model).
    ``majority_vote``: the fraction of members whose argmax is the foreground.
    """
    inf = model.card["inference"]
    window = tuple(int(w) for w in inf["window"])
    kwargs = dict(window=window, overlap=float(inf.get("overlap", 0.25)), blend=inf.get("blend", "constant"),
                  batch_size=int(inf.get("batch_size", 1)))
    vol = x[..., None].astype(np.float32)
    if inf["ensemble"] == "majority_vote":
        votes = [np.argmax(sliding_window(lambda b, m=m: np.asarray(m(b, training=False)), vol, **kwargs), -1)
                 for m in model.models]
        return np.mean(votes, axis=0).astype(np.float32)
    logits = sliding_window(lambda b: np.asarray(model.fused(b, training=False)), vol, **kwargs)
    return _softmax_fg(logits)


def merged_components(volumes_ml: Sequence[float]) -> list[int]:
    """0-based indices of the components larger than 2x the mean component volume, i.e. bodies
    that touch and merged (spec ``spine_vertebrae.md`` §10.2); none for fewer than 2."""
    if len(volumes_ml) < 2:
        return []
    mean = float(np.mean(volumes_ml))
    return [i for i, v in enumerate(volumes_ml) if v > 2.0 * mean]


def filter_components(card: ModelCard, mask: np.ndarray, spacing_mm) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The card's component filter (spec §10.1, D3) on ``mask`` ``(I, J, K)`` of a grid with
    voxel ``spacing_mm``: :func:`zoo.postprocessing.remove_small_components` with
    ``min_component_ml`` / ``min_component_vox`` and the card's connectivity."""
    post = card["postprocessing"]
    return postprocessing.remove_small_components(
        mask, spacing_mm, min_ml=post.get("min_component_ml"), min_voxels=post.get("min_component_vox"),
        connectivity=int(post.get("connectivity", 6)))


def name_vertebrae(labels: np.ndarray, affine: np.ndarray,
                   volumes_ml: Sequence[float] | None = None) -> tuple[np.ndarray, list[str], list[int]]:
    """Number the components of ``labels`` (1..n) as vertebrae from superior to inferior.

    Args:
        labels: int component map ``(I, J, K)`` with labels 1..n.
        affine: its voxel-to-RAS affine (superior = larger world z).
        volumes_ml: the components' volumes (index = label - 1); when one of them is a merge
            (:func:`merged_components`), six components are not six bodies.
    Returns:
        ``(vertebrae, names, order)``: ``vertebrae`` uint8 with 1..6 = Th12..L5 when there are
        exactly six components and none is merged; otherwise the components are numbered 1..n
        from superior to inferior and named ``body1``.. (flagged by the caller). ``order``
        lists the source label of each output number.
    """
    order = postprocessing.order_by_world_axis(labels, affine, axis=2, descending=True)
    levels = len(order) == len(VERTEBRAE) and not merged_components(volumes_ml or [])
    names = list(VERTEBRAE) if levels else [f"body{i + 1}" for i in range(len(order))]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.uint8)
    for new, old in enumerate(order, start=1):
        lookup[old] = new
    return lookup[labels], names, order


def predict(model, volumes: dict[str, Volume], *, resample: bool = False) -> Prediction:
    """Segment the vertebral bodies Th12-L5 of one sagittal T2w volume (module docstring).

    Args:
        model: the :class:`~zoo.model.ZooModel` of this entry.
        volumes: ``{"t2": Volume}`` in ``(i, j, k)`` order, any orientation and spacing.
        resample: accepted for the common CLI/API signature; with one input there is no other
            grid to resample onto, so it has no effect.
    Returns:
        Prediction on the input's grid with images ``vertebral_bodies`` (uint8 0/1),
        ``vertebrae`` (uint8, 1..6 = Th12..L5 superior to inferior) and
        ``vertebral_bodies_probability`` (float32); ``volumes_ml`` with ``vertebral_bodies``
        (total) and one entry per body (``Th12`` .. ``L5``) in mL; QC: component count, the
        merged-body flag (a body larger than 2x the mean, spec §10), removed components.
    Raises:
        ConstantImageError: a constant image (cannot be z-scored).
    """
    card, variant = model.card, model.variant
    ref = volumes[card.variant(variant)["inputs"][0]]
    pipe = pipeline(card)
    x, state, prob, prob_native, timing = probability_on_input_grid(
        pipe, ref, lambda arr: network_probability(model, arr))
    t0 = time.perf_counter()
    raw = postprocessing.binarise(prob_native, float(card["inference"]["threshold"]))
    post = card["postprocessing"]
    mask, labels, vols = filter_components(card, raw, ref.spacing)
    vertebrae, names, order = name_vertebrae(labels, ref.affine, vols)
    volumes_ml = {"vertebral_bodies": postprocessing.volume_ml(mask, ref.spacing)}
    volumes_ml.update({name: vols[old - 1] for name, old in zip(names, order)})
    n_raw = int(postprocessing.remove_small_components(raw, ref.spacing, connectivity=int(
        post.get("connectivity", 6)))[1].max())
    flags = []
    if names != list(VERTEBRAE):
        flags.append(f"visual_qc: {len(order)} components found, expected {len(VERTEBRAE)} separate bodies; "
                     "they are named body1.. from superior to inferior")
    big = {i + 1 for i in merged_components(vols)}
    merged = [n for n, old in zip(names, order) if old in big]
    if merged:
        flags.append(f"merged_bodies: {merged} larger than 2x the mean body volume")
    timing["postprocess"] = time.perf_counter() - t0
    return Prediction(
        images={"vertebral_bodies": ref.to_image(mask, np.uint8),
                "vertebrae": ref.to_image(vertebrae, np.uint8),
                "vertebral_bodies_probability": ref.to_image(prob_native, np.float32)},
        volumes_ml=volumes_ml, entry=card.id, variant=variant, card_version=card.version,
        qc={"n_bodies": len(order), "n_components_raw": n_raw,
            "network_shape": [int(s) for s in x.shape], "network_spacing_mm": list(state.spacing),
            "flags": flags},
        timing_s=timing,
        network_grid={"probability": prob, "state": state},
    )


def score(subject, pred: Prediction, model) -> dict:
    """Score one prediction against the subject's Th12-L5 reference.

    On the input's own grid: DSC and HD95 (mm) of the post-processed mask (``metrics.md`` §1,
    §4.1). On the network grid (4.4 x 0.78 x 0.78 mm, the reference transformed like the image
    with nearest neighbour, spec §11): DSC and ``hd_vox_network_grid`` (§4.2, voxels, the
    metric of the published Table 1), raw (probability > threshold) and post-processed (the
    card's component filter on that grid). ``n_bodies`` = predicted bodies. Per-vertebra
    volumes (mL, input grid): the reference's 26-connected components named like the
    prediction's (NaN unless six), the prediction's Th12..L5 (NaN unless six separate bodies).
    Labels with Th11 (``meta["label_rule"]``) are converted with
    :func:`zoo.training.datasets.th12_l5_mask`.

    Raises:
        GridMismatchError: the label's shape differs from the image's.
    """
    from zoo import metrics
    from zoo.io import read_volume
    from zoo.training.datasets import th12_l5_mask

    ref = read_volume(str(subject.label), "label")
    g, info = th12_l5_mask(ref.array, ref.affine, subject.meta.get("label_rule"))
    p = np.asarray(pred.images["vertebral_bodies"].dataobj) > 0
    out = {"dsc": metrics.dice(g > 0, p), "hd95_mm": metrics.hd95_mm(g > 0, p, ref.affine),
           "n_bodies": float(pred.qc["n_bodies"]), "flags": list(info["flags"]) + list(pred.qc["flags"])}
    card, state = model.card, pred.network_grid["state"]
    g_net = pipeline(card).apply_label((g > 0).astype(np.uint8), state) > 0
    raw = pred.network_grid["probability"] > float(card["inference"]["threshold"])
    kept = filter_components(card, raw, state.spacing)[0] > 0
    for suffix, mask in (("_raw", raw), ("", kept)):
        out[f"dsc_network_grid{suffix}"] = metrics.dice(g_net, mask)
        out[f"hd_vox_network_grid{suffix}"] = metrics.hd_vox_network_grid(g_net, mask)
    _, ref_labels, ref_vols = postprocessing.remove_small_components(g > 0, ref.spacing, connectivity=26)
    _, ref_names, ref_order = name_vertebrae(ref_labels, ref.affine, ref_vols)
    ref_ml = {n: ref_vols[old - 1] for n, old in zip(ref_names, ref_order)}
    for v in VERTEBRAE:
        out[f"volume_ml_ref_{v}"] = float(ref_ml.get(v, np.nan))
        out[f"volume_ml_pred_{v}"] = float(pred.volumes_ml.get(v, np.nan))
    return out


def aggregate(table) -> dict:
    """Bland–Altman agreement of the per-vertebra volumes (mL) over all cases and levels of a
    ``zoo evaluate`` table (spec §11; :func:`zoo.metrics.bland_altman`, model − expert); only
    the vertebrae the model separated and named take part (``n`` pairs)."""
    from zoo import metrics

    ref = table[[f"volume_ml_ref_{v}" for v in VERTEBRAE]].to_numpy(dtype=float).ravel()
    pred = table[[f"volume_ml_pred_{v}" for v in VERTEBRAE]].to_numpy(dtype=float).ravel()
    return {"bland_altman_volume_ml": metrics.bland_altman(ref, pred)}
