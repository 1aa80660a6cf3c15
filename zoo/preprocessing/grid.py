"""Checks and resampling between voxel grids of several inputs (e.g. T1 onto the FLAIR grid)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from zoo import errors
from zoo.io import Volume

#: Tolerance of the grid comparison: affine entries in mm (metrics.md §8 uses 1e-4 mm).
GRID_ATOL_MM = 1e-4


def same_grid(a: Volume, b: Volume, atol: float = GRID_ATOL_MM) -> bool:
    """True when two volumes have the same shape and voxel-to-world affine (within ``atol`` mm)."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=atol)


def resample_to_grid(moving: Volume, reference: Volume, order: int = 1) -> Volume:
    """Resample ``moving`` onto ``reference``'s grid through world coordinates (both affines).

    Linear (``order=1``) for images, nearest (``order=0``) for labels. Voxels of the
    reference grid outside the moving image's field of view get 0. No registration is done:
    the two images must already share a world space (e.g. scanner coordinates of one session).

    Returns:
        A Volume with ``reference``'s shape, affine and header holding the resampled data.
    """
    vox_to_vox = np.linalg.inv(moving.affine) @ reference.affine
    data = ndimage.affine_transform(np.asarray(moving.array, dtype=np.float32), vox_to_vox[:3, :3],
                                    vox_to_vox[:3, 3], output_shape=reference.shape, order=order,
                                    mode="constant", cval=0.0)
    out = reference.with_array(data)
    out.source = f"{moving.source} (resampled onto {reference.source})"
    return out


def align_inputs(volumes: dict[str, Volume], reference: str, *, resample: bool = False) -> dict[str, Volume]:
    """Make every input share the ``reference`` input's grid.

    Args:
        volumes: name -> Volume; ``volumes[reference]`` defines the grid (the FLAIR for WMH).
        reference: name of the reference input.
        resample: resample inputs on another grid onto the reference grid (world coordinates,
            linear; masks nearest) instead of raising.
    Raises:
        GridMismatchError: an input is on another grid and ``resample`` is False.
    """
    ref = volumes[reference]
    out = {}
    for name, vol in volumes.items():
        if name == reference or same_grid(vol, ref):
            out[name] = vol
            continue
        if not resample:
            raise errors.GridMismatchError(
                f"{name} ({vol.source}, shape {vol.shape}, spacing "
                f"{tuple(np.round(vol.spacing, 3))} mm) is not on the {reference} grid "
                f"({ref.source}, shape {ref.shape}, spacing {tuple(np.round(ref.spacing, 3))} mm); "
                f"register and resample it onto the {reference} first, or pass resample=True "
                "(CLI: --resample) if both share a world space")
        out[name] = resample_to_grid(vol, ref, order=0 if name.endswith("mask") else 1)
    return out
