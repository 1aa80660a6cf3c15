"""3D augmentation of ``(D, H, W)`` image/label patches in NumPy/SciPy (training only), spec
``spine_vertebrae.md`` §8. Spatial transforms are applied jointly (linear for the image,
nearest for the label, fill 0) and computed in millimetres, so the anisotropic network grid
(4.4 x 0.78 x 0.78 mm) rotates and deforms physically; gamma touches the image only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

#: Spec §8 defaults (a recipe's ``augmentation`` block overrides them).
DEFAULTS: dict[str, Any] = {
    "affine_probability": 0.5, "scale": [0.9, 1.1], "rotation_deg": 5.0,
    "elastic_probability": 0.5, "elastic_control_points": 5, "elastic_max_displacement_mm": 5.5,
    "gamma_probability": 0.5, "log_gamma": 0.2,
}


def _rotation(angles_rad: Sequence[float]) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spacing: Sequence[float],
                  scale: Sequence[float] = (0.9, 1.1), rotation_deg: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Random anisotropic scaling (per axis ~ U(scale)) and rotation (per axis ~ U(±rotation_deg)),
    no translation, about the patch centre in mm (TorchIO ``RandomAffine``). ``image``/``label``
    are ``(D, H, W)``; returns the warped pair (image float32 linear, label nearest, fill 0)."""
    s = rng.uniform(scale[0], scale[1], size=3)
    r = _rotation(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, size=3)))
    sp = np.asarray(spacing, float)
    # output voxel -> mm -> inverse (rotate, scale) -> mm -> input voxel
    forward = r @ np.diag(s)
    matrix = np.diag(1.0 / sp) @ np.linalg.inv(forward) @ np.diag(sp)
    centre = (np.asarray(image.shape, float) - 1.0) / 2.0
    offset = centre - matrix @ centre
    img = ndimage.affine_transform(image.astype(np.float32), matrix, offset, order=1, mode="constant", cval=0.0)
    lbl = ndimage.affine_transform(label, matrix, offset, order=0, mode="constant", cval=0)
    return img, lbl


def random_elastic(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spacing: Sequence[float],
                   control_points: int = 5, max_displacement_mm: float = 5.5) -> tuple[np.ndarray, np.ndarray]:
    """Random elastic deformation (TorchIO ``RandomElasticDeformation``): a grid of
    ``control_points`` per axis with displacements ~ U(±max_displacement_mm) in mm, the outer
    control points locked at 0, interpolated to every voxel with cubic B-splines."""
    shape = image.shape
    coarse = rng.uniform(-max_displacement_mm, max_displacement_mm, size=(3, *(control_points,) * 3))
    coarse[:, [0, -1], :, :] = 0.0
    coarse[:, :, [0, -1], :] = 0.0
    coarse[:, :, :, [0, -1]] = 0.0
    grid = np.meshgrid(*[np.linspace(0, control_points - 1, n) for n in shape], indexing="ij")
    coords = []
    for axis in range(3):
        disp_mm = ndimage.map_coordinates(coarse[axis], grid, order=3, mode="nearest")
        coords.append(np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
                      + disp_mm / float(spacing[axis]))
    coords = np.stack(np.broadcast_arrays(*coords))
    img = ndimage.map_coordinates(image.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    lbl = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
    return img, lbl


def random_gamma(image: np.ndarray, rng: np.random.Generator, log_gamma: float = 0.2) -> np.ndarray:
    """``sign(x)·|x|^γ`` with ``log γ ~ U(±log_gamma)`` (z-scored images, spec §8.3)."""
    g = float(np.exp(rng.uniform(-log_gamma, log_gamma)))
    return (np.sign(image) * np.abs(image) ** g).astype(np.float32)


def augment3d(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spacing: Sequence[float],
              config: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spec §8 order: affine (p), elastic (p), gamma (p); each with its own probability from
    ``config`` (:data:`DEFAULTS` for missing keys). ``(D, H, W)`` in, same shapes out."""
    c = {**DEFAULTS, **dict(config or {})}
    if rng.random() < float(c["affine_probability"]):
        image, label = random_affine(image, label, rng, spacing, c["scale"], float(c["rotation_deg"]))
    if rng.random() < float(c["elastic_probability"]):
        image, label = random_elastic(image, label, rng, spacing, int(c["elastic_control_points"]),
                                      float(c["elastic_max_displacement_mm"]))
    if rng.random() < float(c["gamma_probability"]):
        image = random_gamma(image, rng, float(c["log_gamma"]))
    return image, label
