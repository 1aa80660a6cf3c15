#!/usr/bin/env python
"""Make the upstream parity fixtures (run ONCE by a developer, in a throwaway environment).

    python -m venv /tmp/venv-antspy && /tmp/venv-antspy/bin/pip install antspynet==0.3.2 nibabel pyyaml jsonschema SimpleITK
    /tmp/venv-antspy/bin/python tools/make_upstream_parity_fixtures.py [--cases wmh_flair_mni ...]

For each case: build the reference networks of ANTsPyNet (``create_sysu_media_unet_model_2d``),
draw seeded random weights in their Keras 2 layout with :func:`zoo.converters.seeded.seeded_layout`
(the procedure the CI tests repeat), write them as Keras 2 ``.h5`` files under the pretrained-
network keys into a private ANTsXNet cache folder (so the reference functions load them offline),
run the reference function end to end on a real scan of ``../shared/data`` and store, in
``tests/fixtures/upstream_parity/<case>.npz``: the seeds, the layout spec, the input files'
sha256, and the reference probabilities at a strided grid of voxels (every 3rd voxel in-plane of
3 axial voxel planes; float32, exact as returned). Nothing of ANTsPyNet is copied into the zoo:
the zoo's profiles are written from the behaviour these fixtures pin down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "tests" / "fixtures" / "upstream_parity"

#: case -> (reference function, inputs relative to shared/data, key prefixes with member seeds)
CASES = {
    "wmh_flair_mni": dict(function="sysu_media_wmh_segmentation", inputs={"flair": "open_ms/mni/patient19/flair.nii.gz"},
                          keys=[f"sysuMediaWmhFlairOnlyModel{i}" for i in range(3)], channels=1),
    "wmh_flair_t1_mni": dict(function="sysu_media_wmh_segmentation",
                             inputs={"flair": "open_ms/mni/patient19/flair.nii.gz", "t1": "open_ms/mni/patient19/t1.nii.gz"},
                             keys=[f"sysuMediaWmhFlairT1Model{i}" for i in range(3)], channels=2),
    "wmh_flair_native": dict(function="sysu_media_wmh_segmentation",
                             inputs={"flair": "open_ms/native/patient01_study1/flair.nii.gz"},
                             keys=[f"sysuMediaWmhFlairOnlyModel{i}" for i in range(3)], channels=1),
    "claustrum_mni152": dict(function="claustrum_segmentation", inputs={"t1": "claustrum/mni152_t1.nii.gz"},
                             keys=[f"claustrum_axial_{i}" for i in range(3)] + [f"claustrum_coronal_{i}" for i in range(3)],
                             channels=1),
}
SEED0 = 15000  # member m of a case uses seed SEED0 + 10 * case_index + m
STRIDE = 3


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_index(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every STRIDE-th voxel in i and j, at 3 axial planes (30 %, 50 %, 70 % of k)."""
    ks = np.unique(np.clip(np.round(np.array([0.3, 0.5, 0.7]) * (shape[2] - 1)), 0, shape[2] - 1).astype(int))
    return np.arange(0, shape[0], STRIDE), np.arange(0, shape[1], STRIDE), ks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()

    import ants
    import antspynet
    from antspynet.architectures import create_sysu_media_unet_model_2d
    from antspynet.utilities import set_antsxnet_cache_directory

    from zoo.converters.keras2_h5 import write_keras2_h5
    from zoo.converters.seeded import layout_spec_of, seeded_layout

    OUT.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="antsxnet-parity-"))
    set_antsxnet_cache_directory(str(cache))
    for case in args.cases:
        spec = CASES[case]
        case_index = list(CASES).index(case)
        size = (180, 180) if spec["function"] == "claustrum_segmentation" else (200, 200)
        kwargs = {"anatomy": "claustrum"} if spec["function"] == "claustrum_segmentation" else {}
        model = create_sysu_media_unet_model_2d((*size, spec["channels"]), **kwargs)
        layout = layout_spec_of(model)
        seeds = [SEED0 + 10 * case_index + m for m in range(len(spec["keys"]))]
        for key, seed in zip(spec["keys"], seeds):
            write_keras2_h5(cache / f"{key}.h5", seeded_layout(layout, seed))
        images = {name: ants.image_read(str(DATA / rel)) for name, rel in spec["inputs"].items()}
        if spec["function"] == "sysu_media_wmh_segmentation":
            prob = antspynet.sysu_media_wmh_segmentation(images["flair"], t1=images.get("t1"), use_ensemble=True)
        else:
            prob = antspynet.claustrum_segmentation(images["t1"], do_preprocessing=False, use_ensemble=True)
        arr = prob.numpy().astype(np.float32)  # ANTs arrays are in NIfTI voxel order (i, j, k)
        ii, jj, kk = sample_index(arr.shape)
        values = arr[np.ix_(ii, jj, kk)]
        meta = {"case": case, "function": spec["function"], "inputs": spec["inputs"],
                "input_sha256": {n: sha256(DATA / r) for n, r in spec["inputs"].items()},
                "keys": spec["keys"], "seeds": seeds, "layout": layout, "shape": list(arr.shape),
                "antspynet": getattr(antspynet, "__version__", "0.3.2"), "antspyx": ants.__version__,
                "options": {"use_ensemble": True, **({"do_preprocessing": False}
                                                      if spec["function"] == "claustrum_segmentation" else {})},
                "stats": {"min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()),
                          "sampled_std": float(values.std())}}
        np.savez_compressed(OUT / f"{case}.npz", i=ii, j=jj, k=kk, probability=values,
                            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        print(case, json.dumps(meta["stats"]), "->", OUT / f"{case}.npz", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
