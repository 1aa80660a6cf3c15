"""lung_nodule shipped weights on real LIDC nodules (``shared/data/lidc_voi`` and ``lidc``).

The shipped network was trained on every labelled ``lidc_voi`` nodule (CPU budget, see the
card), so the fixed subset below is *training* data: this test checks that the shipped weights
load (sha256), run through the public API and separate benign from malignant far better than a
constant (AUC 0.5) or random model; the generalisation estimate is the card's cross-validation.
"""

from __future__ import annotations

import numpy as np
import pytest

from zoo import metrics
from zoo.training import datasets

#: ROC AUC of the shipped weights (sha256 19357416...) on the subset below, measured with this
#: test's code on 2026-11-21: 0.920 (accuracy 0.833, 17 TP, 9 FP, 38 TN, 2 FN). The threshold
#: leaves a 0.12 margin under it and lies far above what a constant model gets (0.5) and what a
#: random one gets (0.5, SD 0.078 over 2,000 draws on these 66 nodules: 0.80 is ~3.9 SD away).
MEASURED_AUC = 0.920
AUC_THRESHOLD = 0.80


@pytest.fixture(scope="module")
def shipped():
    import zoo

    return zoo.load("lung_nodule")


def _subset(root):
    """Every 8th labelled nodule (cases sorted by name): 66 nodules of lidc_voi."""
    nodules = sorted((n for s in datasets.lidc_voi(root) for n in s.meta["nodules"] if n["label"] is not None),
                     key=lambda n: n["case"])
    return nodules[::8]


def test_shipped_weights_auc_on_fixed_subset(shipped, shared_data):
    nodules = _subset(shared_data / "lidc_voi")
    y, p = [], []
    for n in nodules:
        pred = shipped.predict({"ct": str(n["image"]), "nodule_mask": str(n["mask"])})
        y.append(n["label"])
        p.append(float(pred.table.p_malignant[0]))
    y, p = np.asarray(y), np.asarray(p)
    assert len(y) == 66 and 0 < y.sum() < len(y)
    assert np.all((p >= 0) & (p <= 1))
    auc = metrics.roc_auc(y, p)
    assert metrics.roc_auc(y, np.full(len(y), 0.5)) == 0.5  # what a constant model gets
    assert auc > AUC_THRESHOLD, f"shipped weights: ROC AUC {auc:.3f} on the fixed subset"


def test_normalised_lidc_nodules_declared_normalised(shipped, shared_data):
    """Issue part 7: the 18 ``shared/data/lidc`` nodules are stored with normalised intensities
    (not HU); they run only when declared ``intensity="normalised"`` (values clipped to [0, 1]).
    Their scale is not the model's HU window, so no accuracy is asserted."""
    import pandas as pd

    root = shared_data / "lidc"
    table = pd.read_csv(root / "nodules.csv")
    probs = []
    for row in table.itertuples():
        pred = shipped.predict({"ct": str(root / row.image), "nodule_mask": str(root / row.mask)},
                               intensity="normalised")
        probs.append(float(pred.table.p_malignant[0]))
    assert len(probs) == 18 and all(0.0 <= q <= 1.0 for q in probs)
