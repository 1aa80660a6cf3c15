"""``skull_stripping`` on scans that are already skull-stripped: the brain mask should give back
the scan's non-zero region (issue 16). Prints, per scan, the Dice of the predicted brain mask
against the non-zero voxels, both volumes in mL and the QC flags.

    python -m zoo.training.stripped_input_check [--weights W] \\
        ../shared/data/open_ms/mni/patient07/flair.nii.gz ../shared/data/ixi002/t1.nii.gz ...

With no files, the stripped scans of ``shared/data`` that no skull_stripping model trained on
(:data:`DEFAULT_SCANS`, relative to ``--data``). ``--csv`` also writes the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: Skull-stripped scans of shared/data, none of them in shared/data/heads: open_ms MNI (1 mm,
#: FLAIR/T1w/T2w), IXI002 (HD-BET, T1w 1.2 mm sagittal, T2w), the BraTS example FLAIR.
DEFAULT_SCANS = ("open_ms/mni/patient07/flair.nii.gz", "open_ms/mni/patient07/t1.nii.gz",
                 "open_ms/mni/patient19/flair.nii.gz", "open_ms/mni/patient19/t2.nii.gz",
                 "ixi002/t1.nii.gz", "ixi002/t2.nii.gz", "multicontrast/brats_example/flair.nii.gz")


def nonzero_agreement(model, path: str | Path) -> dict:
    """Run ``model`` (a loaded skull_stripping entry) on the scan at ``path`` and compare its
    brain mask with the scan's non-zero voxels on the scan's own grid.

    Returns ``{"scan", "dice_vs_nonzero", "brain_ml", "nonzero_ml", "flags"}`` (volumes in mL).
    Raises the entry's typed errors (e.g. NoHeadError) unchanged.
    """
    from zoo import metrics
    from zoo.io import read_volume

    vol = read_volume(str(path), model.input_names[0])
    pred = model.predict({model.input_names[0]: vol})
    mask = np.asarray(pred.images["brain_mask"].dataobj) > 0
    nonzero = np.asarray(vol.array) != 0
    return {"scan": str(path), "dice_vs_nonzero": metrics.dice(nonzero, mask),
            "brain_ml": float(pred.volumes_ml["brain"]),
            "nonzero_ml": float(nonzero.sum() * np.prod(vol.spacing) / 1000.0),
            "flags": ";".join(pred.qc["flags"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scans", nargs="*")
    ap.add_argument("--data", default="../shared/data", help="root of DEFAULT_SCANS when no scans are given")
    ap.add_argument("--weights", default="default", help="'default' (shipped) or a weights file/folder")
    ap.add_argument("--csv", default=None)
    a = ap.parse_args(argv)
    import pandas as pd

    from zoo import registry

    model = registry.load("skull_stripping", weights=a.weights)
    scans = a.scans or [str(Path(a.data) / s) for s in DEFAULT_SCANS]
    rows = [nonzero_agreement(model, s) for s in scans]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mean Dice vs non-zero: {table['dice_vs_nonzero'].mean():.4f} (n={len(table)})")
    if a.csv:
        from zoo.io import atomic_write_text
        atomic_write_text(a.csv, table.to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
