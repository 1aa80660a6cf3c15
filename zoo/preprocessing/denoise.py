"""Optional denoising before intensity normalisation.

The claustrum papers (Li et al., HBM 2021, spec ``claustrum_multiview.md`` §2 and §4 step 1)
denoised with spatially adaptive non-local means (ANLM, Manjón et al., JMRI 2010) in MATLAB.
No validated Python ANLM exists, so the zoo offers SimpleITK's patch-based denoiser
(``sitk.PatchBasedDenoisingImageFilter``, a non-local patch-similarity method) as a documented
**substitute** (a deviation, off by default). Arrays are ``(I, J, K)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from zoo import errors

METHODS = ("none", "patch_based")

#: SimpleITK defaults kept except the iteration count (1 keeps a 1 mm brain to about a minute
#: on one CPU core); override with the step's ``params``.
DEFAULT_PARAMS = {"patch_radius": 2, "number_of_iterations": 1, "kernel_bandwidth_sigma": 400.0,
                  "noise_model": "rician"}


def denoise(array: np.ndarray, step: Mapping[str, Any], *, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
            source: str = "image") -> np.ndarray:
    """Denoise a volume as the card's ``denoise`` step says.

    Args:
        array: ``(I, J, K)`` intensities (any units).
        step: ``{"method": "none" | "patch_based", "params": {...}}``; ``params`` keys
            ``patch_radius`` (voxels), ``number_of_iterations``, ``kernel_bandwidth_sigma``,
            ``noise_model`` (``rician``, ``gaussian``, ``poisson`` or ``nomodel``).
        spacing_mm: voxel spacing in mm (the filter works in physical space).
        source: input name for messages.
    Returns:
        float32 ``(I, J, K)`` (``method: none`` returns the input as float32). With the rician
        or poisson noise model, negative values (cubic-resampling undershoot) are set to 0 first.
    Raises:
        ValueError: unknown method or parameter.
        NonFiniteError: the filter produced NaN/Inf.
    """
    method = step.get("method", "none")
    if method not in METHODS:
        raise ValueError(f"denoise method must be one of {METHODS}, got {method!r}")
    x = np.asarray(array, dtype=np.float32)
    if method == "none":
        return x
    import SimpleITK as sitk

    params = {**DEFAULT_PARAMS, **dict(step.get("params") or {})}
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"unknown denoise parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    if params["noise_model"] in ("rician", "poisson"):
        x = np.maximum(x, 0.0)  # these models need >= 0 (cubic resampling can undershoot)
    img = sitk.GetImageFromArray(np.transpose(x, (2, 1, 0)).copy())  # (k, j, i) for SimpleITK
    img.SetSpacing(tuple(float(s) for s in spacing_mm))
    f = sitk.PatchBasedDenoisingImageFilter()
    f.SetPatchRadius(int(params["patch_radius"]))
    f.SetNumberOfIterations(int(params["number_of_iterations"]))
    f.SetKernelBandwidthSigma(float(params["kernel_bandwidth_sigma"]))
    models = {"rician": f.RICIAN, "gaussian": f.GAUSSIAN, "poisson": f.POISSON, "nomodel": f.NOMODEL}
    if params["noise_model"] not in models:
        raise ValueError(f"noise_model must be one of {sorted(models)}, got {params['noise_model']!r}")
    f.SetNoiseModel(models[params["noise_model"]])
    out = np.transpose(sitk.GetArrayFromImage(f.Execute(img)), (2, 1, 0)).astype(np.float32)
    if not np.isfinite(out).all():
        raise errors.NonFiniteError(f"{source}: denoising produced non-finite values; run without "
                                    "the denoise option")
    return out
