"""Training slices for slice-wise 2D entries, made with the same pipeline as prediction.

Each subject's volumes go through the entry's :class:`~zoo.preprocessing.pipeline.SlicePipeline`
(the card's steps and options), and the label through ``forward_label`` with the recorded
geometry, so a slice seen in training is exactly what the network sees at prediction time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zoo.card import ModelCard
from zoo.io import read_volume
from zoo.preprocessing.grid import align_inputs
from zoo.preprocessing.pipeline import MASK_INPUT, SlicePipeline

log = logging.getLogger(__name__)


@dataclass
class SliceSet:
    """Network-space training slices of several subjects.

    Attributes:
        images: float32 ``(M, H, W, C)``, channels in the variant's input order.
        masks: float32 ``(M, H, W, 1)`` with values {0, 1}.
        subject_index: int ``(M,)``: which subject (position in ``subject_ids``) a slice came from.
        subject_ids: the subjects, in order.
    """

    images: np.ndarray
    masks: np.ndarray
    subject_index: np.ndarray
    subject_ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def band_keep(n_slices: int, fraction: float) -> np.ndarray:
    """Boolean ``(n_slices,)``: False for the ``round(fraction * n)`` slices dropped at each
    end in training (spec ``wmh_ensemble.md`` §4 step 6, decision D13)."""
    k = int(round(fraction * n_slices))
    keep = np.ones(n_slices, dtype=bool)
    if k > 0:
        keep[:k] = False
        keep[n_slices - k:] = False
    return keep


def label_to_target(labels: np.ndarray, foreground: Sequence[int]) -> np.ndarray:
    """Binary training target: 1 where the label is one of ``foreground`` (WMH: label 1), else
    0; so label 2 (other pathology) is background (decision D7, policy ``background``).
    Labels are compared by value after rounding, never through a cast threshold."""
    values = np.rint(np.asarray(labels, dtype=np.float64)).astype(np.int64)
    return np.isin(values, np.asarray(list(foreground), dtype=np.int64)).astype(np.float32)


def build_slices(subjects, card: ModelCard, variant: str, recipe: dict,
                 *, resample: bool = False) -> SliceSet:
    """Preprocess subjects into training slices.

    Args:
        subjects: :class:`zoo.training.datasets.Subject` records with ``images`` for every
            input of the variant and a ``label``; an ``images["brain_mask"]`` is passed to the
            pipeline as the given brain mask (it replaces the card's computed mask for the
            z-score, exactly as the ``brain_mask`` input of ``predict``).
        card: the entry's card (with any options applied).
        variant: the card variant (its ``inputs`` are the channels).
        recipe: the resolved recipe (``data.label_foreground``, ``data.train_slice_band``).
        resample: put inputs on other grids onto the reference grid (world coordinates).
    Returns:
        :class:`SliceSet` with the band slices removed.
    Raises:
        InputError subclasses for unreadable inputs; ValueError for a subject without label.
    """
    channels = card.variant(variant)["inputs"]
    pipe = SlicePipeline(card["preprocessing"]["steps"], channels)
    xs, ys, idx, ids = [], [], [], []
    for n, subject in enumerate(subjects):
        if subject.label is None:
            raise ValueError(f"subject {subject.id} has no label file")
        vols = {c: read_volume(subject.images[c], c) for c in channels}
        if MASK_INPUT in subject.images:  # a given brain mask: the z-score region, as in predict
            vols[MASK_INPUT] = read_volume(subject.images[MASK_INPUT], MASK_INPUT)
        vols = align_inputs(vols, channels[0], resample=resample)
        label = read_volume(subject.label, "label")
        if label.shape != vols[channels[0]].shape:
            label = align_inputs({channels[0]: vols[channels[0]], "label_mask": label},
                                 channels[0], resample=resample)["label_mask"]
        x, state = pipe.apply(vols)
        y = pipe.forward_label(label_to_target(label.array, recipe["data"]["label_foreground"]), state)
        keep = band_keep(x.shape[0], float(recipe["data"]["train_slice_band"]))
        xs.append(x[keep])
        ys.append(y[keep][..., None].astype(np.float32))
        idx.append(np.full(int(keep.sum()), n, dtype=np.int32))
        ids.append(subject.id)
        log.info("%s: %d training slices (%d dropped in the band)", subject.id, int(keep.sum()),
                 int((~keep).sum()))
    return SliceSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(idx), ids)
