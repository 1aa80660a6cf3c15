"""lung_nodule shipped weights on real LIDC nodules (``shared/data/lidc_voi`` and ``lidc``).

The default network was trained on every labelled ``lidc_voi`` nodule (card 0.2.0), so the fixed
subset below is *training* data: that test checks that the shipped weights load (sha256), run
through the public API at their frame and separate benign from malignant far better than a
constant or random model. The generalisation estimate is the ``holdout`` variant's: the last test
reruns the card's measured validation figures from the shipped holdout weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from zoo import metrics
from zoo.training import datasets

#: ROC AUC of the shipped default weights (card 0.2.0, sha256 3a547660...) on the subset below,
#: measured with this test's code on 2026-12-03: 0.971 (accuracy 0.879, 17 TP, 6 FP, 41 TN, 2 FN;
#: the holdout variant: 0.969, the 0.1.x 16x16x16 weights: 0.920). The threshold leaves a 0.07
#: margin and lies far above what a constant model gets (0.5) and what a random one gets (0.5,
#: SD 0.078 over 2,000 draws on these 66 nodules: 0.90 is ~5 SD away).
MEASURED_AUC = 0.971
AUC_THRESHOLD = 0.90


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


def test_holdout_variant_reproduces_the_card_validation_figures(shared_data, tmp_path):
    """Issue 17: the card's measured figures are those of the shipped ``holdout`` weights on the
    68 patients of ``training/splits/lung_nodule_holdout.json`` they never saw. Rerun them through
    ``zoo evaluate``'s code (same seed, same 2,000 patient-bootstrap resamples) and compare every
    row, point estimate and interval, at the card's 3 decimals."""
    from pathlib import Path

    import zoo
    from zoo.training.evaluate_nodules import evaluate_nodules

    manifest = Path(__file__).resolve().parents[1] / "training" / "splits" / "lung_nodule_holdout.json"
    val = set(datasets.manifest_part(manifest, "val"))
    subjects = [s for s in datasets.lidc_voi(shared_data / "lidc_voi") if s.id in val]
    s = evaluate_nodules("lung_nodule", subjects, tmp_path, variant="holdout")
    assert (s["n_patients"], s["n_nodules"]) == (68, 100)
    card = zoo.card("lung_nodule")
    rows = [m for m in card.metrics["measured"] if m.get("variant") == "holdout"]
    assert len(rows) == 10
    sha = {r["sha256"] for r in card.variant("holdout")["weights"]}
    for m in rows:
        level = m["subset"].split()[0]  # "nodule level ..." / "patient level ..."
        ci = s["intervals"][level][m["name"]]
        assert set(m["weights_sha256"]) == sha
        assert round(s[level][m["name"]], 3) == pytest.approx(m["value"], abs=1e-9), (level, m["name"])
        assert [round(ci["low"], 3), round(ci["high"], 3)] == pytest.approx(m["ci95"], abs=1e-9), (level, m["name"])
