"""Reorientation by axis permutation and flips only (never interpolates), with its exact inverse.

Arrays are in nibabel voxel order ``(i, j, k)``; orientation codes follow nibabel
(``('L', 'A', 'S')`` means i grows towards patient Left, j Anterior, k Superior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt


@dataclass(frozen=True)
class Reorientation:
    """A permutation/flip taking arrays from one voxel orientation to ``target`` codes.

    ``forward`` and ``inverse`` are exact (a view of the data, re-ordered), so a round trip
    returns the identical array.
    """

    transform: np.ndarray  # nibabel ornt array (3, 2): target axis, flip
    shape: tuple[int, int, int]  # shape of the source grid

    @classmethod
    def between(cls, affine: np.ndarray, shape: Sequence[int], target: Sequence[str]) -> "Reorientation":
        """The reorientation from a grid (``affine``, ``shape``) to the ``target`` axis codes."""
        src = ornt.io_orientation(affine)
        dst = ornt.axcodes2ornt(tuple(target))
        return cls(ornt.ornt_transform(src, dst), tuple(int(s) for s in shape[:3]))

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Reorient ``(I, J, K, ...)`` to the target codes; trailing axes are carried along."""
        return ornt.apply_orientation(array, self.transform)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Map an array in the target orientation back to the source grid's voxel order."""
        out = ornt.apply_orientation(array, _invert_ornt(self.transform))
        if tuple(out.shape[:3]) != self.shape:
            raise ValueError(f"inverse reorientation gave {out.shape[:3]}, expected {self.shape}")
        return out

    def target_affine(self, affine: np.ndarray) -> np.ndarray:
        """The voxel-to-world affine of the reoriented grid (same world, new voxel order)."""
        return affine @ ornt.inv_ornt_aff(self.transform, self.shape)


def _invert_ornt(transform: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel ornt transform: if forward sends source axis a to target axis
    t with flip f, the inverse sends target axis t back to a with the same flip."""
    inv = np.zeros_like(transform)
    for src_axis, (dst_axis, flip) in enumerate(transform):
        inv[int(dst_axis)] = (src_axis, flip)
    return inv


def axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    """Orientation codes of an affine's voxel axes (nibabel's ``aff2axcodes``)."""
    return nib.aff2axcodes(affine)
