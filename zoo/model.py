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
        backend: ``"keras"`` (default) or ``"onnx"``: then ``models`` are
            :class:`~zoo.onnx_backend.OnnxMember` objects (onnxruntime sessions called like the
            Keras members) and ``keras_models`` keeps the Keras members they were exported from.
    """

    def __init__(self, card: ModelCard, variant: str, models: list[keras.Model],
                 entry: ModuleType, weights_source: list[str] | None = None,
                 backend: str = "keras", keras_models: list[keras.Model] | None = None):
        self.card = card
        self.variant = variant
        self.models = models
        self.weights_source = weights_source
        self.backend = backend
        self.keras_models = list(models) if keras_models is None else keras_models
        self._entry = entry
        self._fused: keras.Model | None = None

    def __repr__(self) -> str:
        src = "untrained" if self.weights_source is None else f"{len(self.weights_source)} weight file(s)"
        backend = "" if self.backend == "keras" else f" backend={self.backend}"
        return (f"<ZooModel {self.card.id} v{self.card.version} variant={self.variant} "
                f"members={len(self.models)} {src}{backend}>")

    @property
    def input_names(self) -> list[str]:
        """Required inputs of this variant, in channel order (e.g. ``["flair", "t1"]``)."""
        return list(self.card.variant(self.variant)["inputs"])

    @property
    def optional_inputs(self) -> list[str]:
        return [i["name"] for i in self.card["inputs"] if i["optional"]]

    @property
    def fused(self) -> keras.Model:
        """All members fused into one graph (one call runs every member; mean of outputs); with
        the ONNX backend a :class:`~zoo.inference.ensemble.MeanOfMembers` of the sessions."""
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
                the reference input's grid through world coordinates). Keys of ``inputs`` that
                the entry lists in ``NON_IMAGE_INPUTS`` (e.g. ``nodule_center_mm``) are passed
                to the entry as keyword arguments too.
        Returns:
            :class:`~zoo.prediction.Prediction` with outputs on the reference input's grid.
        Raises:
            MissingModalityError: a required input is missing or an unknown name is given;
            ConstantImageError: an image input (not a mask) has one value everywhere;
            any :class:`~zoo.errors.InputError` raised while reading or checking the inputs.
        """
        if isinstance(inputs, Mapping):  # values that are not images (e.g. a nodule centre in mm)
            values = set(getattr(self._entry, "NON_IMAGE_INPUTS", ()))
            kwargs = {**{k: v for k, v in inputs.items() if k in values}, **kwargs}
            inputs = {k: v for k, v in inputs.items() if k not in values}
        named = self._name_inputs(inputs)
        t0 = time.perf_counter()
        volumes: dict[str, Volume] = {name: read_volume(obj, name) for name, obj in named.items()}
        self._check_not_constant(volumes)
        read_s = time.perf_counter() - t0
        pred = self._entry.predict(self, volumes, **kwargs)
        pred.timing_s = {"read": read_s, **pred.timing_s}
        pred.input_paths = [v.path for v in volumes.values() if v.path is not None]
        return pred

    def _check_not_constant(self, volumes: Mapping[str, Volume]) -> None:
        """Raise ConstantImageError for an image input (not a mask) whose voxels are all equal:
        no entry can normalise or segment it (a blank export, a failed conversion)."""
        masks = {i["name"] for i in self.card["inputs"] if i.get("modality") == "mask"}
        for name, vol in volumes.items():
            if name in masks or vol.array.size == 0:
                continue
            lo, hi = vol.array.min(), vol.array.max()
            if lo == hi:
                raise errors.ConstantImageError(
                    f"{name}: {vol.source} is constant (every voxel is {lo.item():g}); give the "
                    f"acquired {name} image (check the export or conversion that produced it)")

    def _name_inputs(self, inputs: Any) -> dict[str, Any]:
        required = self.input_names
        allowed = set(required) | set(self.optional_inputs)
        named = dict(inputs) if isinstance(inputs, Mapping) else {required[0]: inputs}
        unknown = sorted(set(named) - allowed)
        if unknown:
            raise errors.MissingModalityError(
                f"{self.card.id} ({self.variant}) has no input {', '.join(map(repr, unknown))}; "
                f"it takes {required} (required) and {self.optional_inputs} (optional)")
        if self.card.variant(self.variant).get("any_subset"):  # e.g. diamondgan: any non-empty subset
            required = [] if named else required[:1]
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
