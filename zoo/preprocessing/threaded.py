"""``scipy.ndimage.affine_transform`` on several CPU cores.

SciPy's interpolation runs on one core but releases the GIL, so the output volume is cut into
slabs along its first axis and each slab is interpolated by its own thread with the offset of
its first row: ``out[p] = input(matrix @ p + offset)`` is unchanged, so the result equals the
single call up to the rounding of the coordinates (the slab's offset adds ``matrix @ (start, 0, 0)``
in another order). That rounding moves a coordinate by a few ulp: harmless for linear
interpolation with a boundary mode that is continuous (``nearest``, ``reflect``, ...), but it
could flip a nearest-neighbour tie (``order=0``, common with integer zoom factors) or a voxel
exactly on the field-of-view edge with ``mode="constant"``. Only linear interpolation with a
continuous mode is therefore split; every other call is the single SciPy call, unchanged.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from scipy import ndimage

from zoo.terminal import cpu_threads

#: Below this many output voxels one call is faster than starting threads.
MIN_VOXELS_PER_THREAD = 1 << 18


def affine_transform(array: np.ndarray, matrix, offset=0.0, output_shape: Sequence[int] | None = None,
                     order: int = 1, mode: str = "constant", cval: float = 0.0, prefilter: bool = True,
                     output=None, threads: int | None = None) -> np.ndarray:
    """``scipy.ndimage.affine_transform`` (same arguments and result) split over ``threads``.

    Args:
        array: the input volume ``(I, J, K)`` (any dimensionality >= 1).
        matrix: ``(N,)`` diagonal or ``(N, N)`` matrix mapping output to input indices.
        offset: ``(N,)`` or scalar, input index of output index 0.
        output_shape: shape of the result (default: ``array.shape``).
        order, mode, cval, prefilter, output: as SciPy (``output`` as a dtype).
        threads: worker threads (default: the cores this process may use,
            :func:`zoo.terminal.cpu_threads`).
    Returns:
        The transformed array of ``output_shape``.
    """
    array = np.asarray(array)
    shape = tuple(int(s) for s in (output_shape if output_shape is not None else array.shape))
    matrix = np.asarray(matrix, dtype=float)
    offset = np.broadcast_to(np.asarray(offset, dtype=float), (array.ndim,)).copy()
    n = threads or cpu_threads()
    n = min(n, shape[0], max(1, int(np.prod(shape)) // MIN_VOXELS_PER_THREAD))
    kwargs = dict(order=order, mode=mode, cval=cval, prefilter=prefilter)
    if output is not None:
        kwargs["output"] = output
    if n <= 1 or order != 1 or mode in ("constant", "grid-constant"):
        return ndimage.affine_transform(array, matrix, offset, output_shape=shape, **kwargs)
    bounds = np.linspace(0, shape[0], n + 1).astype(int)
    step = matrix * np.eye(array.ndim)[0] if matrix.ndim == 1 else matrix[:, 0]  # input move per output row

    def slab(start: int, stop: int) -> np.ndarray:
        return ndimage.affine_transform(array, matrix, offset + step * start,
                                        output_shape=(stop - start, *shape[1:]), **kwargs)

    with ThreadPoolExecutor(n) as pool:
        parts = list(pool.map(slab, bounds[:-1], bounds[1:]))
    return np.concatenate(parts, axis=0)
