"""A Keras 3 model zoo for medical imaging.

>>> import zoo
>>> zoo.list()                                   # one row per entry
>>> m = zoo.load("wmh_ensemble", weights=None)   # untrained architecture
>>> pred = m.predict({"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz"})
>>> pred.save("out/")

Names are imported lazily (PEP 562) so that ``import zoo`` and the CLI's help stay fast;
TensorFlow is loaded only when a model is built.
"""

from __future__ import annotations

import importlib
import os as _os
from typing import Any

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels: TensorFlow turns them on by default only on some Intel CPUs; elsewhere (this
# project's AMD EPYC machines) its plain kernels run a 3D convolution 14-20x slower (measured:
# Conv3D 2->2 channels on 160 x 160 x 92 voxels, 2.23 s vs 0.16 s; see benchmarks/predict_latency.py).
# Set before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 in the environment keeps them off.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# Eager and light (no TensorFlow): also makes ``zoo.card`` the function, not the submodule.
from zoo.registry import card, list_entries as list, load  # noqa: E402,A001

_LAZY = {
    "ModelCard": ("zoo.card", "ModelCard"),
    "ZooModel": ("zoo.model", "ZooModel"),
    "Prediction": ("zoo.prediction", "Prediction"),
    "Volume": ("zoo.io", "Volume"),
    "read_volume": ("zoo.io", "read_volume"),
}
_SUBMODULES = ("errors", "metrics", "weights", "io", "registry", "model", "prediction",
               "postprocessing", "preprocessing", "inference", "architectures", "entries", "cli")

__all__ = ["list", "load", "card", "ModelCard", "ZooModel", "Prediction", "Volume",
           "read_volume", "errors", "metrics", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"zoo.{name}")
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
