"""Segmentation metrics with exact, documented definitions (``specs/metrics.md`` §1–4, §8).

Every metric takes binary masks on the **same voxel grid**. Arrays are in nibabel's voxel axis
order ``(i, j, k)``; slices are along ``k``. Physical points are ``affine @ (i, j, k, 1)`` with a
4x4 RAS voxel-to-world affine in mm (for distances this equals the SimpleITK formula
``origin + direction · (spacing ⊙ index)``, as the LPS/RAS flip preserves lengths).
Everything is computed in float64.

``empty_policy`` selects what happens when a mask is empty:

* ``"zoo"`` (default): the recommended values of ``metrics.md`` §8 (e.g. DSC 1.0 when both masks
  are empty, NaN for undefined distances, never a silent penalty value);
* ``"compat"``: the behaviour of the WMH Segmentation Challenge's official evaluator
  (Kuijf et al., IEEE TMI 2019, ``hjkuijf/wmhchallenge`` ``evaluation.py``), including its NaNs.
  Where that evaluator crashes, :class:`zoo.errors.MetricError` is raised and says so.

Public functions:

* :func:`wmh_challenge`: the five WMH challenge metrics from label images (paths, images,
  ``(array, affine)`` tuples), with the challenge's label handling and binarisation (§2.1).
* :func:`dice`, :func:`h95_wmh_mm`, :func:`abs_vol_diff_pct`, :func:`lesion_recall`,
  :func:`lesion_f1`, :func:`vol_similarity`, :func:`hd95_mm`: the same metrics on boolean masks.
* :func:`hd_vox_network_grid`: the full symmetric Hausdorff distance in voxels (§4.2, spine).
* :func:`challenge_rank_scores`: the challenge's normalised rank score (§2.6).
* :func:`summarise`: mean ± SD and median [IQR] with the NaN count (§7, §8).
* :func:`bland_altman`: bias and 95 % limits of agreement of paired measurements (volumes).
* :func:`psnr_db`, :func:`ssim`, :func:`mae`, :func:`synthesis_metrics`: image-synthesis metrics
  (§5) with an explicit data range, optionally inside a brain mask (``*_brain`` names).
* :func:`classification_metrics`, :func:`roc_auc`, :func:`roc_curve`, :func:`group_max`,
  :func:`cluster_bootstrap`: classification metrics (§6), the patient rule and patient-resampling
  bootstrap intervals.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from zoo import errors
from zoo.io import Volume, read_volume

log = logging.getLogger(__name__)

__all__ = [
    "EMPTY_POLICIES",
    "LESION_F1_MODES",
    "wmh_challenge",
    "dice",
    "h95_wmh_mm",
    "abs_vol_diff_pct",
    "lesion_recall",
    "lesion_f1",
    "vol_similarity",
    "hd95_mm",
    "hd_vox_network_grid",
    "challenge_rank_scores",
    "summarise",
    "bland_altman",
    "psnr_db",
    "ssim",
    "ssim_map",
    "mae",
    "synthesis_metrics",
    "classification_metrics",
    "roc_auc",
    "roc_curve",
    "group_max",
    "cluster_bootstrap",
]

EMPTY_POLICIES = ("zoo", "compat")
LESION_F1_MODES = ("official", "legacy_2017_07")

#: 2D in-plane erosion of the WMH evaluator: full 3x3 square in the i-j plane, none along k.
_INPLANE_3x3 = np.ones((3, 3, 1), dtype=bool)
#: 3D 6-connected structuring element (face neighbours) for ``hd95_mm`` boundaries.
_CROSS_6 = ndi.generate_binary_structure(3, 1)
#: 26-connectivity for lesion components (SimpleITK ``FullyConnected=True``).
_FULL_26 = np.ones((3, 3, 3), dtype=bool)

#: Prediction binarisation bounds of the WMH evaluator (inclusive).
_PRED_MAX = 1000.0
#: Largest distance (mm) between the grid corners of reference and prediction affines (§8).
_AFFINE_TOL_MM = 1e-4

_CRASH = "the official WMH evaluator crashes here"


# --- helpers ---------------------------------------------------------------------------------
def _check_policy(empty_policy: str) -> None:
    if empty_policy not in EMPTY_POLICIES:
        raise errors.MetricError(
            f"empty_policy must be one of {EMPTY_POLICIES}, got {empty_policy!r}")


def _as_mask(x: Any, name: str) -> np.ndarray:
    """A boolean copy/view of ``x``; non-boolean input must hold only 0 and 1."""
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf":
        raise errors.MetricError(f"{name}: a binary mask is expected, got dtype {a.dtype}")
    if not ((a == 0) | (a == 1)).all():
        raise errors.MetricError(
            f"{name}: a binary mask (values 0/1) is expected, found other values "
            f"(range {a.min()}..{a.max()}); threshold it first (card threshold, or "
            "wmh_challenge for the WMH rules)")
    return a.astype(bool)


def _pair(g: Any, p: Any, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    g, p = _as_mask(g, "reference"), _as_mask(p, "prediction")
    if g.shape != p.shape:
        raise errors.MetricError(
            f"reference shape {g.shape} differs from prediction shape {p.shape}; metrics need "
            "both masks on the same voxel grid (resample the prediction to the reference first)")
    if ndim is not None and g.ndim != ndim:
        raise errors.MetricError(f"a {ndim}D mask is expected, got shape {g.shape}")
    return g, p


def _as_affine(affine_or_spacing: Any) -> np.ndarray:
    """A 4x4 float64 voxel-to-world affine from an affine or a 3-vector of spacings (mm)."""
    a = np.asarray(affine_or_spacing, dtype=np.float64)
    if a.shape == (3,):
        if not (np.isfinite(a).all() and (a > 0).all()):
            raise errors.MetricError(f"voxel spacing must be finite and positive, got {a}")
        out = np.eye(4)
        out[:3, :3] = np.diag(a)
        return out
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise errors.MetricError(
            f"a finite 4x4 affine or 3 voxel spacings (mm) are expected, got shape {a.shape}")
    if np.linalg.norm(a[:3, :3], axis=0).min() <= 1e-6:
        raise errors.MetricError("the affine has a zero-length voxel axis (zero spacing)")
    return a


def _spacing_of(affine: np.ndarray) -> np.ndarray:
    """Column norms of the affine (mm per voxel step along i, j, k); requires orthogonality."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    cols = affine[:3, :3] / spacing
    if not np.allclose(cols.T @ cols, np.eye(3), atol=1e-3):
        raise errors.MetricError(
            "the affine is not orthogonal (sheared); a distance transform on the voxel grid "
            "needs orthogonal axes; reslice onto an orthogonal grid first")
    return spacing


def _crop(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0),
                         min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _boundary(x: np.ndarray, structure: np.ndarray, outside: int = 1) -> np.ndarray:
    """``X − erode(X)`` with voxels outside the image counted as foreground (``outside`` 1,
    the zoo definition) or background (``outside`` 0, SciPy's default as in MONAI).

    Exact on a crop: the crop keeps a one-voxel margin of real background wherever it does
    not reach the image edge, so erosion sees the same neighbourhood as on the full image.
    """
    out = np.zeros(x.shape, dtype=bool)
    if not x.any():
        return out
    box = _crop(x, margin=1)
    sub = x[box]
    out[box] = sub & ~ndi.binary_erosion(sub, structure=structure, border_value=outside)
    return out


def _surface_distances(bg: np.ndarray, bp: np.ndarray,
                       spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances ``(d_P, d_G)``: from every boundary voxel of P to the nearest of G and
    back, by an exact Euclidean distance transform (``spacing`` in mm, or voxel units when
    None). All boundary voxels lie in their joint bounding box, so the transform on the crop
    is exact."""
    box = _crop(bg | bp, margin=0)
    bg, bp = bg[box], bp[box]
    return (ndi.distance_transform_edt(~bg, sampling=spacing)[bp],
            ndi.distance_transform_edt(~bp, sampling=spacing)[bg])


def _points_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm, shape ``(N, 3)``) of the voxel centres in ``mask``."""
    ijk = np.argwhere(mask).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _empty_surface_case(n_g: int, n_p: int, empty_policy: str, what: str) -> float | None:
    """NaN / error for the empty-mask cases of the surface distances (§2.2, §8)."""
    if n_p == 0:  # reference behaviour: NaN whenever nothing is predicted
        return math.nan
    if n_g == 0:
        if empty_policy == "compat":
            raise errors.MetricError(
                f"{what}: the reference mask is empty and the prediction is not; {_CRASH} "
                "(empty KD-tree). Use empty_policy='zoo' to get NaN with a flag")
        log.debug("%s: empty reference, non-empty prediction -> NaN", what)
        return math.nan
    return None


def _boundary_empty(bg: np.ndarray, bp: np.ndarray, empty_policy: str, what: str) -> bool:
    """A non-empty mask with no boundary voxel (it fills every slice or the whole image)."""
    if bg.any() and bp.any():
        return False
    if empty_policy == "compat":
        raise errors.MetricError(
            f"{what}: a non-empty mask has no boundary voxels (it fills the whole image "
            f"plane); {_CRASH} (empty point set)")
    log.warning("%s: a non-empty mask has no boundary voxels -> NaN", what)
    return True


# --- §1 DSC ------------------------------------------------------------------------------
def dice(g: Any, p: Any, empty_policy: str = "zoo") -> float:
    """Dice similarity coefficient ``2|G ∩ P| / (|G| + |P|)`` (``metrics.md`` §1).

    Args:
        g, p: reference and prediction masks of equal shape (any axis order, but the same
            for both); boolean, or numeric holding only 0 and 1.
        empty_policy: ``"zoo"``: both empty → 1.0; ``"compat"``: both empty → NaN, computed
            as ``1 − scipy.spatial.distance.dice`` like the WMH evaluator (Kuijf et al. 2019).
            Exactly one empty → 0.0 in both.
    Returns:
        DSC in [0, 1] (a fraction, not %).
    Raises:
        MetricError: shapes differ, non-binary input or unknown ``empty_policy``.
    """
    _check_policy(empty_policy)
    g, p = _pair(g, p)
    ntt = int(np.count_nonzero(g & p))
    n_g, n_p = int(np.count_nonzero(g)), int(np.count_nonzero(p))
    total = n_g + n_p
    if total == 0:
        return math.nan if empty_policy == "compat" else 1.0
    if empty_policy == "compat":  # the evaluator's arithmetic: 1 − (ntf + nft)/(2ntt + ntf + nft)
        return 1.0 - (total - 2 * ntt) / float(total)
    return 2.0 * ntt / float(total)


# --- §2.2 H95 ----------------------------------------------------------------------------
def h95_wmh_mm(g: Any, p: Any, affine: Any, empty_policy: str = "zoo") -> float:
    """WMH challenge H95: 95th-percentile modified Hausdorff distance in mm (``metrics.md`` §2.2).

    Boundaries are ``X − erode(X)`` with a **2D in-plane** 3x3 erosion in the ``i``–``j``
    plane (none along ``k``; outside the image counts as foreground), as SimpleITK
    ``BinaryErode(X, (1, 1, 0))`` in the official evaluator (Kuijf et al., IEEE TMI 2019).
    Boundary voxel centres are mapped to mm with the **reference** affine; directed
    nearest-neighbour distances come from a KD-tree (exact), and the result is
    ``max(P95(d_P), P95(d_G))`` with NumPy's linear percentile.

    Args:
        g, p: reference and prediction masks, shape ``(I, J, K)`` (nibabel voxel order;
            slices along ``k``), boolean or 0/1.
        affine: the reference's 4x4 voxel-to-world affine (mm), or 3 voxel spacings (mm).
        empty_policy: |P| = 0 → NaN in both policies. |G| = 0 with |P| > 0: ``"zoo"`` → NaN
            (:func:`wmh_challenge` flags it); ``"compat"`` → MetricError (the evaluator
            crashes).
    Returns:
        H95 in mm (float), or NaN as above.
    Raises:
        MetricError: shapes differ, not 3D, non-binary input, bad affine, or the compat crash
        cases (including a non-empty mask without boundary voxels).
    """
    _check_policy(empty_policy)
    g, p = _pair(g, p, ndim=3)
    aff = _as_affine(affine)
    special = _empty_surface_case(int(np.count_nonzero(g)), int(np.count_nonzero(p)),
                                  empty_policy, "h95_wmh_mm")
    if special is not None:
        return special
    bg, bp = _boundary(g, _INPLANE_3x3), _boundary(p, _INPLANE_3x3)
    if _boundary_empty(bg, bp, empty_policy, "h95_wmh_mm"):
        return math.nan
    pts_g, pts_p = _points_mm(bg, aff), _points_mm(bp, aff)
    d_p = cKDTree(pts_g).query(pts_p, k=1, eps=0, p=2)[0]  # each P point → nearest G point
    d_g = cKDTree(pts_p).query(pts_g, k=1, eps=0, p=2)[0]
    return float(max(np.percentile(d_p, 95), np.percentile(d_g, 95)))


# --- §2.3 AVD ----------------------------------------------------------------------------
def abs_vol_diff_pct(g: Any, p: Any, empty_policy: str = "zoo") -> float:
    """WMH absolute volume difference ``|V_G − V_P| / V_G × 100`` in % (``metrics.md`` §2.3).

    Volumes are voxel counts on the shared grid (equal to the mm³ ratio). Not symmetric:
    the reference volume is the denominator. (Not "average Hausdorff distance".)

    Args:
        g, p: reference and prediction masks of equal shape, boolean or 0/1.
        empty_policy: V_G = 0: ``"zoo"`` → NaN; ``"compat"`` → MetricError (the official
            evaluator, Kuijf et al. 2019, divides by zero).
    Returns:
        AVD in percent (0 = equal volumes; 100 when nothing is predicted).
    Raises:
        MetricError: shapes differ, non-binary input, or V_G = 0 in compat mode.
    """
    _check_policy(empty_policy)
    g, p = _pair(g, p)
    v_g, v_p = float(np.count_nonzero(g)), float(np.count_nonzero(p))
    if v_g == 0:
        if empty_policy == "compat":
            raise errors.MetricError(
                f"abs_vol_diff_pct: the reference volume is 0; {_CRASH} (division by zero). "
                "Use empty_policy='zoo' to get NaN")
        return math.nan
    return abs(v_g - v_p) / v_g * 100.0


# --- §2.4, §2.5 lesion detection ---------------------------------------------------------
def _lesion_counts(g: np.ndarray, p: np.ndarray) -> tuple[int, int, int, int]:
    """(N_G, #detected G lesions, N_P, #P components touching G), 26-connectivity."""
    lab_g, n_g = ndi.label(g, structure=_FULL_26)
    lab_p, n_p = ndi.label(p, structure=_FULL_26)
    both = g & p
    detected = int(np.count_nonzero(np.bincount(lab_g[both], minlength=n_g + 1)[1:]))
    hitting = int(np.count_nonzero(np.bincount(lab_p[both], minlength=n_p + 1)[1:]))
    return int(n_g), detected, int(n_p), hitting


def lesion_recall(g: Any, p: Any) -> float:
    """Lesion-wise recall of the WMH challenge (``metrics.md`` §2.4).

    Lesions are 3D connected components of G with 26-connectivity (SimpleITK
    ``ConnectedComponentImageFilter``, ``FullyConnected=True``). A reference lesion is
    detected if at least one predicted voxel lies in it.

    Args:
        g, p: reference and prediction masks of equal shape ``(I, J, K)``, boolean or 0/1.
    Returns:
        ``#detected / N_G`` in [0, 1]; 1.0 when G has no lesion (same in both policies).
    Raises:
        MetricError: shapes differ or non-binary input.
    """
    g, p = _pair(g, p)
    n_g, detected, _, _ = _lesion_counts(g, p)
    return 1.0 if n_g == 0 else detected / float(n_g)


def _lesion_f1_from_counts(n_g: int, detected: int, n_p: int, hitting: int, mode: str,
                           empty_policy: str) -> float:
    if mode == "official":
        recall = 1.0 if n_g == 0 else detected / float(n_g)
        precision = 1.0 if n_p == 0 else hitting / float(n_p)
        if precision + recall == 0.0:
            return 0.0
        return 2.0 * (precision * recall) / (precision + recall)
    # legacy_2017_07: precision uses the recall numerator; no guard against zero denominators
    if n_g == 0 or n_p == 0 or detected == 0:
        if empty_policy == "compat":
            raise errors.MetricError(
                f"lesion_f1 (legacy_2017_07): N_G={n_g}, N_P={n_p}, detected={detected}; the "
                "July 2017 evaluator divides by zero here. Use empty_policy='zoo' for NaN or "
                "mode='official'")
        return math.nan
    recall = detected / float(n_g)
    precision = detected / float(n_p)
    return 2.0 * (precision * recall) / (precision + recall)


def lesion_f1(g: Any, p: Any, mode: str = "official", empty_policy: str = "zoo") -> float:
    """Lesion-wise F1 of the WMH challenge (``metrics.md`` §2.5).

    Components of G and P use 26-connectivity. ``recall`` is :func:`lesion_recall`.

    * ``mode="official"`` (evaluator revision 2017-08-11 and later, Kuijf et al. 2019):
      ``precision = #(P components overlapping G) / N_P`` (1.0 if N_P = 0);
      ``F1 = 2PR/(P + R)``, 0 if P + R = 0. Same in both policies.
    * ``mode="legacy_2017_07"`` (July 2017 evaluator, vendored in ``hongweilibran/wmh_ibbmTum``):
      ``precision = #(detected G lesions) / N_P`` and no zero guards. Where that code divides
      by zero (N_G = 0, N_P = 0 or no detected lesion): ``"zoo"`` → NaN, ``"compat"`` →
      MetricError. Use only to reproduce numbers made with that copy.

    Args:
        g, p: reference and prediction masks of equal shape ``(I, J, K)``, boolean or 0/1.
        mode: ``"official"`` or ``"legacy_2017_07"``.
        empty_policy: ``"zoo"`` or ``"compat"`` (matters only for the legacy mode).
    Returns:
        F1 in [0, 1] (legacy mode can exceed 1 when one component covers several lesions).
    Raises:
        MetricError: shapes differ, non-binary input, unknown mode/policy, legacy compat
        division by zero.
    """
    _check_policy(empty_policy)
    if mode not in LESION_F1_MODES:
        raise errors.MetricError(f"lesion_f1 mode must be one of {LESION_F1_MODES}, got {mode!r}")
    g, p = _pair(g, p)
    return _lesion_f1_from_counts(*_lesion_counts(g, p), mode=mode, empty_policy=empty_policy)


# --- §3 volumetric similarity ------------------------------------------------------------
def vol_similarity(g: Any, p: Any, empty_policy: str = "zoo") -> float:
    """Volumetric similarity ``VS = 1 − |V_G − V_P| / (V_G + V_P)`` (``metrics.md`` §3).

    Ignores overlap and boundaries; volumes are voxel counts on the shared grid.

    Args:
        g, p: reference and prediction masks of equal shape, boolean or 0/1.
        empty_policy: both empty → 1.0 (``"zoo"``) or NaN (``"compat"``); one empty → 0.0.
    Returns:
        VS as a fraction in [0, 1]; multiply by 100 to report it in % as the claustrum papers do.
    Raises:
        MetricError: shapes differ, non-binary input or unknown ``empty_policy``.
    """
    _check_policy(empty_policy)
    g, p = _pair(g, p)
    v_g, v_p = float(np.count_nonzero(g)), float(np.count_nonzero(p))
    if v_g + v_p == 0:
        return math.nan if empty_policy == "compat" else 1.0
    return 1.0 - abs(v_g - v_p) / (v_g + v_p)


# --- §4.1 HD95 ---------------------------------------------------------------------------
def hd95_mm(g: Any, p: Any, affine_or_spacing: Any, empty_policy: str = "zoo") -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm, zoo definition (``metrics.md`` §4.1).

    Boundaries are ``X − erode(X)`` with the 3D 6-connected element (outside the image counts
    as foreground). Directed distances from each boundary voxel centre to the other boundary
    come from an exact Euclidean distance transform with the voxel spacing;
    the result is ``max(P95(d_P), P95(d_G))`` (NumPy linear percentile). On an isotropic
    grid the values are multiples of √k × spacing. Used for the claustrum and spine entries;
    not the WMH H95 (:func:`h95_wmh_mm`, 2D boundaries).

    Args:
        g, p: reference and prediction masks, shape ``(I, J, K)``, boolean or 0/1.
        affine_or_spacing: the 4x4 voxel-to-world affine (mm, orthogonal; only its column
            norms matter) or the 3 voxel spacings (mm) along ``(i, j, k)``.
        empty_policy: as §8: |P| = 0 → NaN; |G| = 0 with |P| > 0 → NaN (``"zoo"``) or
            MetricError (``"compat"``).
    Returns:
        HD95 in mm, or NaN as above.
    Raises:
        MetricError: shapes differ, not 3D, non-binary input, sheared affine, compat crash cases.
    """
    _check_policy(empty_policy)
    g, p = _pair(g, p, ndim=3)
    spacing = _spacing_of(_as_affine(affine_or_spacing))
    special = _empty_surface_case(int(np.count_nonzero(g)), int(np.count_nonzero(p)),
                                  empty_policy, "hd95_mm")
    if special is not None:
        return special
    bg, bp = _boundary(g, _CROSS_6), _boundary(p, _CROSS_6)
    if _boundary_empty(bg, bp, empty_policy, "hd95_mm"):
        return math.nan
    d_p, d_g = _surface_distances(bg, bp, spacing)
    return float(max(np.percentile(d_p, 95), np.percentile(d_g, 95)))


# --- §4.2 HD in voxels of the network grid (spine) -------------------------------------------
def hd_vox_network_grid(g: Any, p: Any, empty_policy: str = "zoo") -> float:
    """Symmetric full (maximum) Hausdorff distance in **voxel units**, ``metrics.md`` §4.2.

    The metric behind the published spine numbers (Kaliyugarasan et al., ISBI 2023, Table 1;
    MONAI ``compute_hausdorff_distance`` with ``percentile=None`` and no spacing): boundaries
    ``X XOR erode(X)`` with SciPy's default cross element and **outside as background**
    (a mask touching the image edge has boundary there), exact Euclidean distances between
    boundary voxel indices, ``max(max d(B(P)→B(G)), max d(B(G)→B(P)))``. Call it on the
    network grid (4.4 x 0.78 x 0.78 mm for spine); the value is not in mm and must not be
    mixed with :func:`hd95_mm`.

    Args:
        g, p: reference and prediction masks, shape ``(X, Y, Z)``, boolean or 0/1.
        empty_policy: as §8: |P| = 0 → NaN; |G| = 0 with |P| > 0 → NaN (``"zoo"``) or
            MetricError (``"compat"``).
    Returns:
        HD in voxels, or NaN as above.
    Raises:
        MetricError: shapes differ, not 3D, non-binary input, the compat crash case.
    """
    _check_policy(empty_policy)
    g, p = _pair(g, p, ndim=3)
    special = _empty_surface_case(int(np.count_nonzero(g)), int(np.count_nonzero(p)),
                                  empty_policy, "hd_vox_network_grid")
    if special is not None:
        return special
    bg, bp = _boundary(g, _CROSS_6, outside=0), _boundary(p, _CROSS_6, outside=0)
    d_p, d_g = _surface_distances(bg, bp)
    return float(max(d_p.max(), d_g.max()))


# --- §2 the WMH challenge, from label images ---------------------------------------------
def _read(obj: Any, name: str, like: Volume | None = None) -> Volume:
    if like is not None and isinstance(obj, np.ndarray):  # bare array: the reference's grid
        obj = (obj, like.affine)
    return read_volume(obj, name)


def _corner_shift_mm(shape: Sequence[int], a: np.ndarray, b: np.ndarray) -> float:
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"),
                       dtype=np.float64).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.abs((a - b) @ corners)[:3].max())


def _binarise_prediction(raw: np.ndarray, source: str, empty_policy: str) -> tuple[np.ndarray, bool]:
    """§2.1.4: integer 1..1000, float 0.5..1000 inclusive. Returns (mask, any value > 1000)."""
    above = raw > _PRED_MAX
    has_above = bool(above.any())
    if has_above and empty_policy == "zoo":
        raise errors.MetricError(
            f"prediction {source}: {int(np.count_nonzero(above)):,} voxels exceed 1000 "
            f"(max {raw.max()}); the WMH evaluator expects a 0/1 mask or probabilities "
            "(values above 1000 count as background there). Give a binary mask, or use "
            "empty_policy='compat' to reproduce the evaluator")
    low = 1 if raw.dtype.kind in "biu" else 0.5
    return (raw >= low) & (raw <= _PRED_MAX), has_above


def wmh_challenge(reference: Any, prediction: Any, *, empty_policy: str = "zoo",
                  lesion_f1_mode: str = "official",
                  check_affine: bool | None = None) -> dict[str, Any]:
    """The five WMH Segmentation Challenge metrics of one case (``metrics.md`` §2, §8).

    Follows the official evaluator (Kuijf et al., IEEE TMI 2019; ``hjkuijf/wmhchallenge``):

    1. shapes must be equal; distances use the **reference** geometry;
    2. reference label 1 (0.5 ≤ v ≤ 1.5) is WMH; label 2 (1.5 ≤ v ≤ 2.5, "other pathology")
       is zeroed in the prediction. Labels are compared by value, so a uint8 and a float
       reference give the same numbers (the official code breaks on integer references);
    3. the prediction is binarised: integer types 1 ≤ v ≤ 1000, floating types
       0.5 ≤ v ≤ 1000 (inclusive). Values > 1000: MetricError (``"zoo"``) or background
       (``"compat"``, flagged ``"prediction_above_1000"``).

    Args:
        reference: the reference label image ``wmh.nii.gz``: a path, a nibabel image, a
            :class:`zoo.io.Volume` or an ``(array, affine)`` tuple; array in ``(i, j, k)``
            order (slices along ``k``), affine 4x4 RAS in mm.
        prediction: the same kinds of input with the same shape, or a bare ndarray (taken to
            be on the reference grid).
        empty_policy: ``"zoo"`` (§8 values) or ``"compat"`` (the evaluator's behaviour; it
            raises MetricError where the evaluator crashes: empty reference with a
            non-empty prediction (H95), empty reference (AVD)).
        lesion_f1_mode: ``"official"`` or ``"legacy_2017_07"`` (see :func:`lesion_f1`).
        check_affine: compare the prediction's affine with the reference's and raise if the
            grid corners differ by more than 1e-4 mm (§8). Default: on for ``"zoo"``, off for
            ``"compat"`` (the evaluator ignores the prediction's header). Either way the
            reference geometry is the one used.
    Returns:
        ``dsc`` (fraction), ``h95_wmh_mm`` (mm), ``abs_vol_diff_pct`` (%), ``lesion_recall``,
        ``lesion_f1`` (floats, NaN where undefined), the aliases ``hd95``, ``avd``, ``recall``,
        ``f1`` of the same values, and ``flags``: a list of strings among
        ``"reference_empty"``, ``"prediction_empty"``, ``"both_empty"``,
        ``"h95_reference_empty"`` (H95 NaN because the reference is empty),
        ``"boundary_empty"``, ``"prediction_above_1000"``.
    Raises:
        MetricError: shapes (or, when checked, affines) differ, prediction values > 1000 in
        zoo mode, or an evaluator crash case in compat mode.
        InputError (and subclasses): an input cannot be read (see :func:`zoo.io.read_volume`).
    """
    _check_policy(empty_policy)
    if lesion_f1_mode not in LESION_F1_MODES:
        raise errors.MetricError(
            f"lesion_f1_mode must be one of {LESION_F1_MODES}, got {lesion_f1_mode!r}")
    ref = _read(reference, "reference")
    bare = isinstance(prediction, np.ndarray)
    pred = _read(prediction, "prediction", like=ref)
    if ref.shape != pred.shape:
        raise errors.MetricError(
            f"reference {ref.source} has shape {ref.shape} but prediction {pred.source} has "
            f"{pred.shape}; the WMH evaluator needs the prediction on the reference grid")
    if check_affine is None:
        check_affine = empty_policy == "zoo"
    if check_affine and not bare:
        shift = _corner_shift_mm(ref.shape, ref.affine, pred.affine)
        if shift > _AFFINE_TOL_MM:
            raise errors.MetricError(
                f"prediction {pred.source} is not on the grid of reference {ref.source}: "
                f"their affines place the grid corners up to {shift:.4g} mm apart (allowed "
                f"{_AFFINE_TOL_MM} mm). Resample the prediction onto the reference grid, or "
                "pass check_affine=False if its header is known to be wrong")

    g_raw = ref.array
    g = (g_raw >= 0.5) & (g_raw <= 1.5)
    other = (g_raw >= 1.5) & (g_raw <= 2.5)
    p, has_above = _binarise_prediction(pred.array, pred.source, empty_policy)
    p &= ~other

    flags: list[str] = []
    if has_above:
        flags.append("prediction_above_1000")
    n_g, n_p = int(np.count_nonzero(g)), int(np.count_nonzero(p))
    if n_g == 0:
        flags.append("reference_empty")
    if n_p == 0:
        flags.append("prediction_empty")
    if n_g == 0 and n_p == 0:
        flags.append("both_empty")
    if n_g == 0 and n_p > 0:
        flags.append("h95_reference_empty")

    dsc = dice(g, p, empty_policy)
    h95 = h95_wmh_mm(g, p, ref.affine, empty_policy)
    if n_g > 0 and n_p > 0 and math.isnan(h95):
        flags.append("boundary_empty")
    avd = abs_vol_diff_pct(g, p, empty_policy)
    counts = _lesion_counts(g, p)
    n_les_g, detected = counts[0], counts[1]
    recall = 1.0 if n_les_g == 0 else detected / float(n_les_g)
    f1 = _lesion_f1_from_counts(*counts, mode=lesion_f1_mode, empty_policy=empty_policy)
    return {
        "dsc": dsc,
        "h95_wmh_mm": h95,
        "abs_vol_diff_pct": avd,
        "lesion_recall": recall,
        "lesion_f1": f1,
        "hd95": h95,
        "avd": avd,
        "recall": recall,
        "f1": f1,
        "flags": flags,
    }


# --- §2.6 ranking ------------------------------------------------------------------------
#: Metric → True if lower is better (the challenge's five metrics).
_RANK_METRICS = {
    "dsc": False,
    "h95_wmh_mm": True,
    "abs_vol_diff_pct": True,
    "lesion_recall": False,
    "lesion_f1": False,
}
_ALIASES = {"h95_wmh_mm": "hd95", "abs_vol_diff_pct": "avd", "lesion_recall": "recall",
            "lesion_f1": "f1"}


def challenge_rank_scores(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """WMH challenge rank score per team (``metrics.md`` §2.6; Kuijf et al., IEEE TMI 2019).

    For each of the five metrics, a team's score is ``(value − best)/(worst − best)`` over the
    observed values (best → 0, worst → 1; lower is better for H95 and AVD, higher for DSC,
    recall and F1; 0 for every team when all values are equal). The final score is the mean
    of the five; lower is better.

    Args:
        results: team name → its metrics (usually the means over the test cases), keyed
            ``dsc``, ``h95_wmh_mm``, ``abs_vol_diff_pct``, ``lesion_recall``, ``lesion_f1``
            (or the aliases ``hd95``, ``avd``, ``recall``, ``f1``).
    Returns:
        Team → final score, ordered best (lowest) first.
    Raises:
        MetricError: no team, a metric missing, or a non-finite value.
    """
    teams = list(results)
    if not teams:
        raise errors.MetricError("challenge_rank_scores: no teams given")
    total = np.zeros(len(teams))
    for metric, lower_better in _RANK_METRICS.items():
        vals = []
        for team in teams:
            row = results[team]
            key = metric if metric in row else _ALIASES.get(metric, metric)
            if key not in row:
                raise errors.MetricError(f"challenge_rank_scores: team {team!r} lacks {metric!r}")
            vals.append(float(row[key]))
        v = np.asarray(vals, dtype=np.float64)
        if not np.isfinite(v).all():
            raise errors.MetricError(
                f"challenge_rank_scores: non-finite {metric} for "
                f"{[t for t, x in zip(teams, v) if not np.isfinite(x)]}; aggregate NaN cases "
                "explicitly before ranking")
        best, worst = (v.min(), v.max()) if lower_better else (v.max(), v.min())
        if worst != best:
            total += (v - best) / (worst - best)
    scores = total / len(_RANK_METRICS)
    order = np.argsort(scores, kind="stable")
    return {teams[i]: float(scores[i]) for i in order}


# --- §7 summaries ------------------------------------------------------------------------
def summarise(values: Iterable[float]) -> dict[str, float | int]:
    """Mean ± SD and median [IQR] of per-case values, NaNs excluded and counted (§7, §8).

    Args:
        values: per-case metric values (any iterable of numbers; NaN = undefined case).
    Returns:
        ``mean``, ``sd`` (ddof = 1; NaN for n < 2), ``median``, ``q25``, ``q75`` (linear
        interpolation), ``n`` (values used), ``n_nan`` (NaNs excluded), ``n_inf``
        (±inf excluded, e.g. PSNR of identical images). Statistics are NaN when n = 0.
    """
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                   dtype=np.float64).ravel()
    nan = np.isnan(v)
    inf = np.isinf(v)
    x = v[~nan & ~inf]
    n = int(x.size)
    out: dict[str, float | int] = {"mean": math.nan, "sd": math.nan, "median": math.nan,
                                   "q25": math.nan, "q75": math.nan, "n": n,
                                   "n_nan": int(nan.sum()), "n_inf": int(inf.sum())}
    if n:
        q25, median, q75 = np.percentile(x, [25, 50, 75])
        out.update(mean=float(x.mean()), median=float(median), q25=float(q25), q75=float(q75))
        if n > 1:
            out["sd"] = float(x.std(ddof=1))
    return out


# --- §5 synthesis metrics (DiamondGAN) --------------------------------------------------------
#: SSIM constants of Wang et al., IEEE TIP 2004 (metrics.md §5): Gaussian sigma 1.5, window
#: 11x11 (scipy truncate 3.5 -> radius 5), K1 = 0.01, K2 = 0.03.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def bland_altman(reference: Iterable[float], measured: Iterable[float]) -> dict[str, float | int]:
    """Bland–Altman agreement of paired measurements (Bland & Altman, Lancet 1986;
    spine spec §11: per-vertebra volumes, expert vs model).

    Differences are ``measured − reference``; pairs with a NaN on either side are dropped
    and counted. ``bias`` is the mean difference, ``sd`` its sample SD (ddof 1), and the 95 %
    limits of agreement are ``bias ± 1.96·sd``; ``mean_reference`` is the mean of the
    reference values of the kept pairs (to read the bias relative to the size).

    Args:
        reference, measured: equal-length sequences in the same unit (e.g. mL).
    Returns:
        ``{"n", "n_nan", "bias", "sd", "loa_lower", "loa_upper", "mean_reference"}``; NaN
        statistics when no pair (bias) or fewer than two pairs (sd, limits) remain.
    Raises:
        MetricError: the sequences differ in length.
    """
    r = np.asarray(list(reference), dtype=np.float64)
    m = np.asarray(list(measured), dtype=np.float64)
    if r.shape != m.shape:
        raise errors.MetricError(f"bland_altman: {r.size} reference vs {m.size} measured values")
    ok = np.isfinite(r) & np.isfinite(m)
    d = m[ok] - r[ok]
    bias = float(d.mean()) if d.size else math.nan
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return {"n": int(d.size), "n_nan": int((~ok).sum()), "bias": bias, "sd": sd,
            "loa_lower": bias - 1.96 * sd, "loa_upper": bias + 1.96 * sd,
            "mean_reference": float(r[ok].mean()) if d.size else math.nan}


def _image_pair(y_true: Any, y_pred: Any, data_range: float, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise errors.MetricError(f"reference and synthetic images differ in shape: {t.shape} vs {p.shape}")
    if not (np.isfinite(data_range) and data_range > 0):
        raise errors.MetricError(f"data_range must be a positive number (e.g. 2.0 for [-1, 1]), got {data_range}")
    m = None
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.shape != t.shape:
            raise errors.MetricError(f"mask shape {m.shape} differs from the images' {t.shape}")
    return t, p, m


def mae(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Mean absolute error ``mean(|y_pred - y_true|)`` (metrics.md §5), over all pixels or over
    ``mask`` (then name it ``mae_brain``). Scale-dependent: report the intensity scale with it.
    NaN when the mask is empty. Raises MetricError on a shape mismatch."""
    t, p, m = _image_pair(y_true, y_pred, 1.0, mask)
    d = np.abs(p - t)
    d = d if m is None else d[m]
    return float(d.mean()) if d.size else math.nan


def psnr_db(y_true: Any, y_pred: Any, data_range: float, mask: Any = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(R^2 / MSE)`` in dB with the declared nominal data
    range ``R`` (metrics.md §5: 2.0 for [-1, 1], 1.0 for [0, 1]; never estimated from the data).

    Over all pixels, or over ``mask`` (name it ``psnr_db_brain``). MSE = 0 gives ``+inf`` (the
    caller excludes it from means and counts it, as :func:`summarise` does); an empty mask NaN.
    Raises MetricError on a shape mismatch or a non-positive ``data_range``.
    """
    t, p, m = _image_pair(y_true, y_pred, data_range, mask)
    d = (p - t) ** 2
    d = d if m is None else d[m]
    if not d.size:
        return math.nan
    mse = float(d.mean())
    return math.inf if mse == 0.0 else float(10.0 * np.log10(data_range ** 2 / mse))


def ssim_map(y_true: Any, y_pred: Any, data_range: float) -> np.ndarray:
    """Local SSIM of two 2D images (Wang et al. 2004; metrics.md §5): Gaussian window sigma 1.5
    (11x11), K1 0.01, K2 0.03, L = ``data_range``, population covariances.

    Returns the ``(H, W)`` SSIM map; only positions at least 5 pixels from the border (the
    window lies inside the image) are meaningful, see :func:`ssim`.
    """
    t, p, _ = _image_pair(y_true, y_pred, data_range, None)
    if t.ndim != 2:
        raise errors.MetricError(f"ssim works on 2D slices, got shape {t.shape}")

    def g(x):
        return ndi.gaussian_filter(x, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_t, mu_p = g(t), g(p)
    var_t = g(t * t) - mu_t ** 2
    var_p = g(p * p) - mu_p ** 2
    cov = g(t * p) - mu_t * mu_p
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mu_t * mu_p + c1) * (2 * cov + c2)) / ((mu_t ** 2 + mu_p ** 2 + c1) * (var_t + var_p + c2))


def ssim(y_true: Any, y_pred: Any, data_range: float, mask: Any = None) -> float:
    """Mean SSIM of two 2D slices over the window positions inside the image (the scikit-image
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` convention: a 5-pixel
    border is left out), metrics.md §5. With ``mask`` the mean runs over the positions inside
    the mask too (name it ``ssim_brain``). NaN when no position is left.
    Raises MetricError on a shape mismatch, non-2D input or a non-positive ``data_range``.
    """
    s = ssim_map(y_true, y_pred, data_range)
    r = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    keep = np.zeros(s.shape, dtype=bool)
    keep[r:s.shape[0] - r, r:s.shape[1] - r] = True
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.shape != s.shape:
            raise errors.MetricError(f"mask shape {m.shape} differs from the images' {s.shape}")
        keep &= m
    return float(s[keep].mean()) if keep.any() else math.nan


def synthesis_metrics(reference: Any, synthetic: Any, data_range: float, mask: Any = None,
                      axis: int = 2) -> dict[str, Any]:
    """Per-slice PSNR, SSIM and MAE of a synthetic volume against the real one, averaged over
    slices (metrics.md §5), plus the per-volume PSNR/MAE.

    Args:
        reference, synthetic: ``(I, J, K)`` arrays on one grid and one intensity scale.
        data_range: nominal range R of that scale (2.0 for [-1, 1], 1.0 for [0, 1]).
        mask: optional boolean ``(I, J, K)`` brain mask; then the names get ``_brain``
            (``psnr_db_brain``, ``ssim_brain``, ``mae_brain``) and only slices with mask voxels
            count.
        axis: the slice axis (2 = axial for ``(i, j, k)`` arrays).
    Returns:
        ``{"psnr_db[_brain]", "ssim[_brain]", "mae[_brain]"}`` = means over slices (inf PSNR
        excluded), ``n_slices``, ``n_inf_psnr``, ``volume_psnr_db[_brain]``,
        ``volume_mae[_brain]``.
    Raises:
        MetricError: shape mismatch or non-positive data range.
    """
    t, p, m = _image_pair(reference, synthetic, data_range, mask)
    sfx = "" if m is None else "_brain"
    psnrs, ssims, maes = [], [], []
    for k in range(t.shape[axis]):
        tk, pk = np.take(t, k, axis=axis), np.take(p, k, axis=axis)
        mk = None if m is None else np.take(m, k, axis=axis)
        if mk is not None and not mk.any():
            continue
        psnrs.append(psnr_db(tk, pk, data_range, mk))
        ssims.append(ssim(tk, pk, data_range, mk))
        maes.append(mae(tk, pk, mk))
    ps = summarise(psnrs)
    return {f"psnr_db{sfx}": ps["mean"], f"ssim{sfx}": summarise(ssims)["mean"],
            f"mae{sfx}": summarise(maes)["mean"], "n_slices": len(psnrs), "n_inf_psnr": ps["n_inf"],
            f"volume_psnr_db{sfx}": psnr_db(t, p, data_range, m), f"volume_mae{sfx}": mae(t, p, m)}


# --- §6 classification metrics (lung_nodule) -------------------------------------------------
def confusion_counts(y_true: Any, y_pred: Any) -> dict[str, int]:
    """TP, FP, TN, FN of binary labels (1 = positive, e.g. malignant), metrics.md §6.

    Raises:
        MetricError: different lengths or values other than 0/1.
    """
    t = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_pred).astype(int).ravel()
    if t.shape != p.shape:
        raise errors.MetricError(f"labels and predictions differ in length: {t.shape} vs {p.shape}")
    if not (np.isin(t, (0, 1)).all() and np.isin(p, (0, 1)).all()):
        raise errors.MetricError("labels and predictions must be 0/1")
    return {"tp": int(((t == 1) & (p == 1)).sum()), "fp": int(((t == 0) & (p == 1)).sum()),
            "tn": int(((t == 0) & (p == 0)).sum()), "fn": int(((t == 1) & (p == 0)).sum())}


def roc_auc(y_true: Any, scores: Any) -> float:
    """ROC AUC by the rank formula (metrics.md §6): the probability that a random positive scores
    higher than a random negative, ties counted 1/2, i.e. Mann-Whitney U / (n1 n0), computed with
    mid-ranks: ``(sum of positive ranks - n1(n1+1)/2) / (n1 n0)``. NaN if only one class is present.
    """
    from scipy.stats import rankdata

    t = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise errors.MetricError(f"labels and scores differ in length: {t.shape} vs {s.shape}")
    n1, n0 = int((t == 1).sum()), int((t == 0).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)  # mid-ranks for ties
    return float((ranks[t == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def malignant(scores: Any, threshold: float = 0.5) -> np.ndarray:
    """The decision of metrics.md §6: 1 (malignant) where ``score > threshold``, else 0.

    At 0.5 this is the argmax of the two softmax outputs, and an exact tie goes to benign, as
    argmax returns the first index. ``scores``: p_malignant, any shape; returns int ``(N,)``.
    """
    return (np.asarray(scores, dtype=np.float64).ravel() > threshold).astype(int)


def classification_metrics(y_true: Any, scores: Any, threshold: float = 0.5) -> dict[str, float]:
    """Nodule-level metrics of metrics.md §6 with malignant = 1 positive: ``accuracy``,
    ``precision`` (NaN without positive predictions), ``recall`` (NaN without positives),
    ``specificity`` (NaN without negatives), ``roc_auc`` (:func:`roc_auc`), and the counts.
    Predictions are :func:`malignant` (``scores > threshold``; a tie at 0.5 is benign)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = confusion_counts(y_true, malignant(s, threshold))
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    n = tp + fp + tn + fn

    def ratio(a: int, b: int) -> float:
        return float(a) / b if b else float("nan")

    return {"accuracy": ratio(tp + tn, n), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "roc_auc": roc_auc(y_true, s), **c}


def roc_curve(y_true: Any, scores: Any) -> dict[str, np.ndarray]:
    """The empirical ROC curve (metrics.md §6), one point per distinct score.

    Thresholds run from the highest score down; at each, every case scoring ``>=`` it is called
    positive, so tied scores move the curve diagonally (which is what makes its trapezoidal area
    equal :func:`roc_auc` with ties counted 1/2). The first point is (0, 0), the last (1, 1).

    Returns:
        ``{"fpr": (M,), "tpr": (M,), "threshold": (M,)}`` float64 (``threshold[0] = +inf``).
    Raises:
        MetricError: different lengths, labels other than 0/1, or only one class present.
    """
    t = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise errors.MetricError(f"labels and scores differ in length: {t.shape} vs {s.shape}")
    if not np.isin(t, (0, 1)).all():
        raise errors.MetricError("labels must be 0/1")
    n1, n0 = int((t == 1).sum()), int((t == 0).sum())
    if n1 == 0 or n0 == 0:
        raise errors.MetricError(f"a ROC curve needs both classes; got {n1} positive and {n0} negative cases")
    thresholds = np.unique(s)[::-1]
    tp = np.array([((s >= th) & (t == 1)).sum() for th in thresholds], dtype=np.float64)
    fp = np.array([((s >= th) & (t == 0)).sum() for th in thresholds], dtype=np.float64)
    return {"fpr": np.concatenate([[0.0], fp / n0]), "tpr": np.concatenate([[0.0], tp / n1]),
            "threshold": np.concatenate([[np.inf], thresholds])}


def group_max(groups: Sequence[Any], y_true: Any, scores: Any) -> dict[str, np.ndarray]:
    """Group-level labels and scores (metrics.md §6 patient level): a group (patient) is
    positive if one of its cases (nodules) is, and scores the maximum of its cases' scores, so
    it is predicted positive iff one of its cases is (for any threshold).

    Returns:
        ``{"group": (G,) object, "y_true": (G,) int, "score": (G,) float64, "n": (G,) int}``,
        groups in order of first appearance.
    Raises:
        MetricError: the three inputs differ in length.
    """
    g = list(groups)
    t = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not len(g) == len(t) == len(s):
        raise errors.MetricError(f"groups, labels and scores differ in length: {len(g)}, {len(t)}, {len(s)}")
    order = list(dict.fromkeys(g))
    index = {k: i for i, k in enumerate(order)}
    gi = np.array([index[k] for k in g], dtype=int)
    y = np.zeros(len(order), int)
    sc = np.full(len(order), -np.inf)
    np.maximum.at(y, gi, t)
    np.maximum.at(sc, gi, s)
    return {"group": np.array(order, dtype=object), "y_true": y, "score": sc,
            "n": np.bincount(gi, minlength=len(order))}


def cluster_bootstrap(n_clusters: int, statistic: Any, n_resamples: int = 2000, seed: int = 42,
                      level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals that resample clusters (patients) with replacement
    (metrics.md §6: 2,000 resamples, resampling patients, 95 %).

    Args:
        n_clusters: number of clusters (patients) ``C``.
        statistic: ``statistic(draw) -> {name: value}`` where ``draw`` is an int array of ``C``
            cluster indices drawn with replacement (a cluster drawn twice counts twice).
        n_resamples: number of resamples ``B``; seed: seed of ``numpy.random.default_rng``.
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles, linear).
    Returns:
        ``{"method", "n_resamples", "seed", "level", "intervals": {name: {"low", "high",
        "n_valid"}}}``; resamples where a value is NaN (e.g. ROC AUC of a resample holding one
        class) are left out of that value's interval and counted by ``n_valid``.
    Raises:
        MetricError: ``n_clusters < 2``, ``n_resamples < 1`` or ``level`` outside (0, 1).
    """
    if n_clusters < 2 or n_resamples < 1 or not 0.0 < level < 1.0:
        raise errors.MetricError(
            f"cluster_bootstrap: needs >= 2 clusters, >= 1 resample and 0 < level < 1; got "
            f"{n_clusters}, {n_resamples}, {level}")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(int(n_resamples)):
        for k, v in statistic(rng.integers(0, n_clusters, n_clusters)).items():
            values.setdefault(k, []).append(float(v))
    q = (100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0)
    intervals = {}
    for k, vals in values.items():
        a = np.asarray(vals)
        a = a[np.isfinite(a)]
        lo, hi = (np.percentile(a, q) if len(a) else (float("nan"), float("nan")))
        intervals[k] = {"low": float(lo), "high": float(hi), "n_valid": int(len(a))}
    return {"method": "percentile bootstrap, clusters (patients) resampled with replacement",
            "n_resamples": int(n_resamples), "seed": int(seed), "level": float(level), "intervals": intervals}
