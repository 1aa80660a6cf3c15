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
sha256, and the reference probabilities at sampled voxels (float32, exact as returned): for the
WMH cases every 3rd voxel in i and j of 3 axial planes; for the claustrum, lines along i at 5 x 5
(j, k) positions spread over the claustrum label. Nothing of ANTsPyNet is copied into the zoo:
the zoo's profiles are written from the behaviour these fixtures pin down.

To keep the run short on a CPU, the reference networks are evaluated only on the slices the
sampled voxels can depend on (computed below with a margin); every other slice gets NaN, and the
script refuses to save a fixture if any sampled value is NaN, so a wrong selection cannot pass
silently. Everything else in the reference functions runs unchanged.
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
CLAUSTRUM_LABEL = "claustrum/claustrum_label.nii.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_index(case: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WMH: every STRIDE-th voxel in i and j at 3 axial planes (30 %, 50 %, 70 % of k).
    Claustrum: every i, at the 10/30/50/70/90 % quantiles of the label's j and k."""
    if case.startswith("claustrum"):
        import nibabel as nib

        lab = np.asarray(nib.load(str(DATA / CLAUSTRUM_LABEL)).dataobj) > 0
        _, jj, kk = np.nonzero(lab)
        q = [0.1, 0.3, 0.5, 0.7, 0.9]
        return (np.arange(shape[0]), np.unique(np.round(np.quantile(jj, q)).astype(int)),
                np.unique(np.round(np.quantile(kk, q)).astype(int)))
    ks = np.unique(np.clip(np.round(np.array([0.3, 0.5, 0.7]) * (shape[2] - 1)), 0, shape[2] - 1).astype(int))
    return np.arange(0, shape[0], STRIDE), np.arange(0, shape[1], STRIDE), ks


def needed_slices(ants, case: str, images: dict, ii, jj, kk, margin: int = 2) -> dict[str, set]:
    """Reference-grid slices (view -> indices) that sampled voxels can depend on, with a margin."""
    if case.startswith("claustrum"):
        t1 = images["t1"]
        mask = ants.threshold_image(t1, 0, 0, 0, 1)
        t = np.asarray(ants.get_center_of_mass(mask)) - np.array([84.5, 127.5, 127.5])
        pts = [np.asarray(ants.transform_index_to_physical_point(t1, (int(ii[0]), int(j), int(k)))) - t
               for j in jj for k in kk]
        cor = {int(np.floor(p[1])) + d for p in pts for d in range(-margin, margin + 2)}
        axi = {int(np.floor(p[2])) + d for p in pts for d in range(-margin, margin + 2)}
        return {"axial": axi, "coronal": cor}
    flair = images["flair"]
    arr = flair.numpy().astype(np.float64)
    c = int(np.floor((arr.sum(axis=(0, 1)) * np.arange(arr.shape[2])).sum() / arr.sum()))
    start = max(c - 127, 0)
    return {"axial": {int(k) - start + d for k in kk for d in range(-margin, margin + 1)}}


def patch_networks(needed: dict[str, set], order: list[str]):
    """Make the reference builder return models that predict only the needed slices (NaN else)."""
    import antspynet.architectures as arch

    original = arch.create_sysu_media_unet_model_2d
    counter = iter(order)

    def build(*args, **kwargs):
        model = original(*args, **kwargs)
        view = next(counter)
        full_predict = model.predict

        def predict(x, *a, **k):
            x = np.asarray(x)
            idx = np.array(sorted(i for i in needed[view] if 0 <= i < len(x)), dtype=int)
            out = np.full((len(x), *model.output_shape[1:]), np.nan, dtype=np.float32)
            if idx.size:
                out[idx] = full_predict(x[idx], *a, **k)
            return out

        model.predict = predict
        return model

    arch.create_sysu_media_unet_model_2d = build
    return original


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
        shape = tuple(next(iter(images.values())).shape)
        ii, jj, kk = sample_index(case, shape)
        needed = needed_slices(ants, case, images, ii, jj, kk)
        order = (["axial"] * 3 + ["coronal"] * 3) if case.startswith("claustrum") else ["axial"] * 3
        import antspynet.architectures as arch

        original = patch_networks(needed, order)
        if spec["function"] == "sysu_media_wmh_segmentation":
            prob = antspynet.sysu_media_wmh_segmentation(images["flair"], t1=images.get("t1"), use_ensemble=True)
        else:
            prob = antspynet.claustrum_segmentation(images["t1"], do_preprocessing=False, use_ensemble=True)
        arch.create_sysu_media_unet_model_2d = original
        arr = prob.numpy().astype(np.float32)  # ANTs arrays are in NIfTI voxel order (i, j, k)
        values = arr[np.ix_(ii, jj, kk)]
        if not np.isfinite(values).all():
            raise SystemExit(f"{case}: {int((~np.isfinite(values)).sum())} sampled values depend on "
                             "slices that were not predicted; widen the margin of needed_slices")
        meta = {"case": case, "function": spec["function"], "inputs": spec["inputs"],
                "input_sha256": {n: sha256(DATA / r) for n, r in spec["inputs"].items()},
                "keys": spec["keys"], "seeds": seeds, "layout": layout, "shape": list(arr.shape),
                "antspynet": getattr(antspynet, "__version__", "0.3.2"), "antspyx": ants.__version__,
                "options": {"use_ensemble": True, **({"do_preprocessing": False}
                                                      if spec["function"] == "claustrum_segmentation" else {})},
                "predicted_slices": {v: sorted(n) for v, n in needed.items()},
                "stats": {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                          "sampled_std": float(values.std())}}
        np.savez_compressed(OUT / f"{case}.npz", i=ii, j=jj, k=kk, probability=values,
                            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        print(case, json.dumps(meta["stats"]), "->", OUT / f"{case}.npz", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
