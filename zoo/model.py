"""``ZooModel``: what ``zoo.load`` returns: the card, the Keras members and ``predict``."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Mapping

import keras

from zoo import errors
from zoo.card import ModelCard
from zoo.inference.ensemble import fuse_members
from zoo.io import Volume, read_volume
from zoo.prediction import Prediction


class ZooModel:
    """A loaded zoo entry.

    Attributes:
        card: the (validated, option-adjusted) :class:`~zoo.card.ModelCard`.
        variant: the variant name (e.g. ``"flair_t1"``).
        models: the ensemble members, ``keras.Model`` each.
        weights_source: where the weights came from (paths), or ``None`` (untrained).
    """

    def __init__(self, card: ModelCard, variant: str, models: list[keras.Model],
                 entry: ModuleType, weights_source: list[str] | None = None):
        self.card = card
        self.variant = variant
        self.models = models
        self.weights_source = weights_source
        self._entry = entry
        self._fused: keras.Model | None = None

    def __repr__(self) -> str:
        src = "untrained" if self.weights_source is None else f"{len(self.weights_source)} weight file(s)"
        return f"<ZooModel {self.card.id} v{self.card.version} variant={self.variant} members={len(self.models)} {src}>"

    @property
    def input_names(self) -> list[str]:
        """Required inputs of this variant, in channel order (e.g. ``["flair", "t1"]``)."""
        return list(self.card.variant(self.variant)["inputs"])

    @property
    def optional_inputs(self) -> list[str]:
        return [i["name"] for i in self.card["inputs"] if i["optional"]]

    @property
    def fused(self) -> keras.Model:
        """All members fused into one graph (one call runs every member; mean of outputs)."""
        if self._fused is None:
            self._fused = fuse_members(self.models, name=f"{self.card.id}_{self.variant}")
        return self._fused

    def predict(self, inputs: Any, **kwargs: Any) -> Prediction:
        """Predict on one subject.

        Args:
            inputs: a mapping input name -> image (``{"flair": ..., "t1": ...}``), or one image
                for the variant's first input. An image is a path (NIfTI, DICOM folder, MHA,
                NRRD), a nibabel or SimpleITK image, or an ``(ndarray, affine)`` tuple with
                the array in ``(i, j, k)`` order and a 4x4 RAS affine in mm.
            **kwargs: entry options (``resample=True`` resamples inputs on another grid onto
                the reference input's grid through world coordinates).
        Returns:
            :class:`~zoo.prediction.Prediction` with outputs on the reference input's grid.
        Raises:
            MissingModalityError: a required input is missing or an unknown name is given;
            any :class:`~zoo.errors.InputError` raised while reading or checking the inputs.
        """
        named = self._name_inputs(inputs)
        t0 = time.perf_counter()
        volumes: dict[str, Volume] = {name: read_volume(obj, name) for name, obj in named.items()}
        read_s = time.perf_counter() - t0
        pred = self._entry.predict(self, volumes, **kwargs)
        pred.timing_s = {"read": read_s, **pred.timing_s}
        pred.input_paths = [v.path for v in volumes.values() if v.path is not None]
        return pred

    def _name_inputs(self, inputs: Any) -> dict[str, Any]:
        required = self.input_names
        allowed = set(required) | set(self.optional_inputs)
        named = dict(inputs) if isinstance(inputs, Mapping) else {required[0]: inputs}
        unknown = sorted(set(named) - allowed)
        if unknown:
            raise errors.MissingModalityError(
                f"{self.card.id} ({self.variant}) has no input {', '.join(map(repr, unknown))}; "
                f"it takes {required} (required) and {self.optional_inputs} (optional)")
        missing = [n for n in required if n not in named]
        if missing:
            hint = ""
            other = [v for v, rec in self.card["variants"].items()
                     if set(rec["inputs"]) <= set(named)]
            if other:
                hint = f", or load variant {other[0]!r} which needs only {self.card.variant(other[0])['inputs']}"
            raise errors.MissingModalityError(
                f"{self.card.id} ({self.variant}) needs {missing} but got only {sorted(named)}; "
                f"pass every input of the variant{hint}")
        return named
