"""A Keras 3 model zoo for medical imaging.

>>> import zoo
>>> zoo.list()                                   # one row per entry
>>> m = zoo.load("wmh_ensemble", weights=None)   # untrained architecture
>>> pred = m.predict({"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz"})
>>> pred.save("out/")
"""

from __future__ import annotations

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from zoo import errors, metrics  # noqa: E402
from zoo.card import ModelCard  # noqa: E402
from zoo.io import Volume, read_volume  # noqa: E402
from zoo.model import ZooModel  # noqa: E402
from zoo.prediction import Prediction  # noqa: E402
from zoo.registry import card, list_entries as list, load  # noqa: E402,A001

__version__ = "0.1.0"
__all__ = ["list", "load", "card", "ModelCard", "ZooModel", "Prediction", "Volume", "read_volume",
           "errors", "metrics", "__version__"]
