"""What ``claustrum_multiview`` (adult T1w) and ``neonatal_claustrum`` (neonatal T2w) share:
the claustrum U-Net members, the multi-view prediction and the claustrum QC. Every number comes
from the entry's card (specs ``claustrum_multiview.md``, ``neonatal_claustrum.md``).

    input (+ optional brain_mask, applied: the input must be skull-stripped)
    -> SlicePipeline(card steps): reorient RAS, resample isotropic (1 mm adult / 0.5 mm
       neonatal, cubic), brain mask (x >= 10, 2D holes filled; or the given mask), optional
       denoising, z-score in the brain; views: axial (voxel axis k) and coronal (axis j), each
       centre crop/pad to 180x180 (adult) / 200x200 (neonatal)        -> per view (N, H, W, 1)
    -> per view: in-band slices (20 % / 25 % dropped at each end) through the view's members,
       mean of their sigmoid maps; out-of-band slices = min of the view's predictions
    -> each view back to the 3D grid; equal-weight fusion P = (P_axial + P_coronal) / 2
    -> inverse resampling + reorientation to the input grid; P > threshold
    -> hemispheres from world x (RAS) against the brain mask's centre of mass: left 1, right 2
    -> Prediction: "claustrum" uint8 {0, 1, 2}, "claustrum_probability" float32, volumes (mL)
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from zoo import postprocessing
from zoo.architectures.unet2d import build_unet2d
from zoo.card import ModelCard
from zoo.inference.ensemble import fuse_members
from zoo.inference.multiview import band_coverage, fuse_views, predict_view, view_members
from zoo.io import Volume
from zoo.preprocessing.grid import align_inputs
from zoo.preprocessing.pipeline import MASK_INPUT, SlicePipeline
from zoo.prediction import Prediction

log = logging.getLogger(__name__)

#: Per-case metric columns of ``zoo evaluate`` (specs/metrics.md names; claustrum papers §10).
EVAL_COLUMNS = ("vol_similarity", "hd95_mm", "dsc")

LEFT, RIGHT = 1, 2


def build_member(card: ModelCard, variant: str, member: int, patch_size: int | None = None) -> keras.Model:
    """One untrained claustrum U-Net (``claustrum_multiview.md`` §5), named ``member{member}``.

    The card's ``architecture`` gives ``input_shape`` (180x180x1 adult, 200x200x1 neonatal),
    ``widths`` and ``first_kernel``; 2,494,529 trainable parameters at either size.
    ``patch_size`` builds it for square patches (the weights are size-independent).
    """
    arch = card.variant(variant)["architecture"]
    shape = tuple(arch["input_shape"])
    if patch_size:
        shape = (int(patch_size), int(patch_size), shape[-1])
    return build_unet2d(shape, batch_norm=bool(arch.get("batch_norm", False)),
                        head=arch.get("head", "sigmoid1"), name=f"member{member}",
                        widths=tuple(arch["widths"]), first_kernel=int(arch["first_kernel"]))


def views_of(card: ModelCard) -> list[str]:
    """The fused views in member order (``inference.views``, e.g. ``[axial, coronal]``)."""
    return list(card["inference"]["views"])


def build_members(card: ModelCard, variant: str) -> list[keras.Model]:
    """``inference.n_members`` members per view, views in ``inference.views`` order: members
    0-2 axial, 3-5 coronal for the released layout (spec D4)."""
    n = int(card["inference"]["n_members"]) * len(views_of(card))
    return [build_member(card, variant, i) for i in range(n)]


def pipeline(card: ModelCard, variant: str) -> SlicePipeline:
    """The card's preprocessing pipeline (its ``slices`` step defines the views)."""
    return SlicePipeline(card["preprocessing"]["steps"], card.variant(variant)["inputs"])


def _view_models(model, views: Sequence[str]) -> dict[str, keras.Model]:
    """Each view's members fused into one graph (cached on the ZooModel instance)."""
    cache = model.__dict__.setdefault("_claustrum_view_models", {})
    if not cache:
        per_view = int(model.card["inference"]["n_members"])
        for view, members in view_members(model.models, views, per_view).items():
            cache[view] = fuse_members(members, name=f"{model.card.id}_{view}")
    return cache


def predict(model, volumes: dict[str, Volume], *, resample: bool = False,
            age_weeks: float | None = None) -> Prediction:
    """Segment the claustrum of one subject (flow in the module docstring).

    Args:
        model: the entry's :class:`~zoo.model.ZooModel`.
        volumes: the variant's image input (``t1`` adult, ``t2`` neonatal; reference grid) and
            optionally ``brain_mask`` (applied to the image: voxels outside are set to 0), each
            a :class:`~zoo.io.Volume` in ``(i, j, k)`` order.
        resample: put a brain mask on another grid onto the image's grid (world coordinates).
        age_weeks: post-menstrual age at scan in weeks (neonatal QC; optional).
    Returns:
        Prediction with ``claustrum`` (uint8; 1 = left, 2 = right) and ``claustrum_probability``
        (float32) on the input's grid and header; ``volumes_ml`` ``claustrum_left``,
        ``claustrum_right``, ``claustrum`` (mL); ``qc`` with ``flags`` (list of strings).
    Raises:
        InputError subclasses (bad inputs, empty brain mask, mask on another grid).
    """
    card, variant = model.card, model.variant
    channels = card.variant(variant)["inputs"]
    inf, post = card["inference"], card["postprocessing"]
    views = views_of(card)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    volumes = align_inputs(volumes, channels[0], resample=resample)
    pipe = pipeline(card, variant)
    per_view = pipe.apply_views(volumes, views)
    timing["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nets = _view_models(model, views)
    grids, coverage, qc_views = [], [], {}
    state = None
    for view in views:
        x, state = per_view[view]
        probs, keep = predict_view(nets[view], x, float(post["band_fraction"]),
                                   batch_size=int(inf.get("batch_size", 8)))
        fill = float(probs[keep].min()) if keep.any() else 0.0
        grid = pipe.slices_to_grid(probs, state, fill_value=fill)
        grids.append(grid)
        coverage.append(band_coverage(keep, state.slice_order, grid.shape))
        qc_views[view] = {"n_slices": int(len(keep)), "in_band": int(keep.sum())}
    fused = fuse_views(grids, coverage, band_fill=post.get("band_fill", "min"))
    timing["network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    prob_native = pipe.grid_to_input(fused, state)
    if post.get("mask_output") and state.input_mask is not None:  # reference profile: P x brain mask
        prob_native = np.where(state.input_mask, prob_native, 0.0).astype(np.float32)
    mask = postprocessing.binarise(prob_native, float(inf["threshold"]))
    ref = volumes[channels[0]]
    brain = state.masks[channels[0]]
    midline = postprocessing.midline_x_mm(brain, state.grid_affine)
    labels = postprocessing.split_hemispheres(mask, ref.affine, midline, LEFT, RIGHT)
    vols = {"claustrum_left": postprocessing.volume_ml(labels == LEFT, ref.spacing),
            "claustrum_right": postprocessing.volume_ml(labels == RIGHT, ref.spacing)}
    vols["claustrum"] = vols["claustrum_left"] + vols["claustrum_right"]
    timing["invert"] = time.perf_counter() - t0
    qc = {"views": qc_views, "midline_x_mm": round(midline, 2),
          "brain_mask_source": "given" if MASK_INPUT in volumes else
          (card.step("brain_mask") or {}).get("method", "threshold"),
          "untrained_weights": model.weights_source is None,
          "flags": qc_flags(post.get("qc", {}), vols, age_weeks)}
    if state.mask_record:
        qc["skull_stripping"] = state.mask_record
    if age_weeks is not None:
        qc["age_weeks"] = float(age_weeks)
    return Prediction(
        images={"claustrum": ref.to_image(labels, np.uint8),
                "claustrum_probability": ref.to_image(prob_native, np.float32)},
        volumes_ml=vols, entry=card.id, variant=variant, card_version=card.version,
        qc=qc, timing_s=timing)


def qc_flags(rules: dict[str, Any], volumes_ml: dict[str, float], age_weeks: float | None) -> list[str]:
    """QC flags from the card's ``postprocessing.qc`` rules.

    Rules: ``min_volume_ml_per_side`` / ``max_volume_ml_per_side`` (a side outside them is
    ``claustrum_<side>_implausibly_small`` / ``_large``; a side with no voxel is
    ``claustrum_<side>_missing``) and ``min_age_weeks`` (a given
    post-menstrual age below it is ``age_below_<n>_weeks``; Neubauer, Li et al. 2022 §11: every
    low-accuracy scan of the 528-scan correction set was acquired before 35 weeks).
    """
    flags = []
    for side in ("left", "right"):
        ml = volumes_ml[f"claustrum_{side}"]
        if ml <= 0.0:
            flags.append(f"claustrum_{side}_missing")
        elif "min_volume_ml_per_side" in rules and ml < float(rules["min_volume_ml_per_side"]):
            flags.append(f"claustrum_{side}_implausibly_small")
        elif "max_volume_ml_per_side" in rules and ml > float(rules["max_volume_ml_per_side"]):
            flags.append(f"claustrum_{side}_implausibly_large")
    limit = rules.get("min_age_weeks")
    if age_weeks is not None and limit is not None and float(age_weeks) < float(limit):
        flags.append(f"age_below_{limit:g}_weeks")
    return flags


def score(subject, pred: Prediction, model) -> dict:
    """VS, HD95 (mm) and DSC of the binary claustrum (left + right merged, as the papers) against
    the subject's label file (labels >= 1 are claustrum)."""
    from zoo import metrics
    from zoo.io import read_volume

    ref = read_volume(subject.label, "label")
    g = np.asarray(ref.array) >= 1
    p = np.asarray(pred.images["claustrum"].dataobj) >= 1
    return {"vol_similarity": metrics.vol_similarity(g, p), "hd95_mm": metrics.hd95_mm(g, p, ref.affine),
            "dsc": metrics.dice(g, p)}


def select_start_weights(card: ModelCard, files: Sequence[Path]) -> list[Path]:
    """Start weights of a single-view training run (``zoo finetune``) from a multi-view
    source: when ``files`` are a whole ensemble (``n_members`` per view, views in card order),
    keep the files of the run's view (card option ``view``). With ``transfer.init_member`` in
    the card (neonatal: 0, spec D4 "axial <- adult axial_0, coronal <- adult coronal_0") every
    member starts from that member of the view; otherwise member i from member i of the view.
    Other file counts (one file, or one per member) are returned unchanged.
    """
    views, per_view = views_of(card), int(card["inference"]["n_members"])
    files = list(files)
    if len(files) != per_view * len(views) or len(views) < 2:
        return files
    view = (card.step("slices") or {}).get("view") or views[0]
    first = views.index(view) * per_view
    init_member = (card.data.get("transfer") or {}).get("init_member")
    if init_member is not None:
        chosen = [files[first + int(init_member)]]
    else:
        chosen = files[first:first + per_view]
    log.info("%s: %s view run starts from %s", card.id, view, ", ".join(str(f) for f in chosen))
    return chosen


def combine_view_runs(axial: str | Path, coronal: str | Path, out_dir: str | Path,
                      per_view: int = 3) -> list[Path]:
    """Put two single-view training runs (``member0..`` of each) into one weights folder in
    the entry's member order: ``member0..{n-1}`` axial, then ``member{n}..{2n-1}`` coronal, so
    ``zoo.load(entry, weights=out_dir)`` loads the multi-view ensemble.

    Raises:
        WeightsNotAvailableError: a member file is missing.
    """
    from zoo import errors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for v, run in enumerate((Path(axial), Path(coronal))):
        for i in range(per_view):
            src = run / f"member{i}.npz"
            if not src.is_file():
                raise errors.WeightsNotAvailableError(f"{src} not found (a {per_view}-member run is expected)")
            dest = out / f"member{v * per_view + i}.npz"
            shutil.copyfile(src, dest)
            written.append(dest)
    return written
