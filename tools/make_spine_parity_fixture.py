"""Make the spine parity fixture (``tests/fixtures/spine_parity``): run once by a developer.

The reference side of issue 15's spine parity test: a MONAI ``UNet`` with the spine spec's
configuration (``specs/spine_vertebrae.md`` §5) holding seeded random weights
(:func:`zoo.converters.monai_unet.seeded_state_dict`, the same numbers the CI test converts), run
on a real Chu et al. spine scan through fastMONAI's inference preprocessing as fastMONAI does it
with TorchIO: ``ScalarImage`` -> ``ToCanonical`` (``reorder=True``) -> ``Resample((4.4, 0.78,
0.78))`` unless every spacing is ``np.isclose`` to the target -> the learner's item transforms
at prediction time, ``ZNormalization()`` then ``PadOrCrop([16, 400, 400])`` (TorchIO
``CropOrPad``, padding 0) -> the network -> softmax over the two channels (fastai's predict with
the loss's softmax activation; the learner then decodes the argmax, the probability is kept here).

fastMONAI itself is not installed (its requirements pull a CUDA torch); the calls above are the
ones its ``med_img_reader`` / ``inference`` / item transforms make (fastMONAI ``vision_core``,
``vision_inference``, ``vision_augmentation``; research/spine notebooks), with TorchIO 0.18.86,
the release fastMONAI pinned in 2023.

Throwaway environment (never the project's venv)::

    python3 -m venv /work/venv-monai
    /work/venv-monai/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /work/venv-monai/bin/pip install monai torchio==0.18.86 jsonschema pyyaml
    /work/venv-monai/bin/python tools/make_spine_parity_fixture.py --data ../shared/data/spine_chu

Writes ``tests/fixtures/spine_parity/{fixture.json, reference.npz}`` (about 0.5 MB): the seed,
the case, the library versions, MONAI's state_dict keys and shapes, statistics and a strided
sample of the preprocessed input, and float32 reference probabilities: the network grid
sampled every 8th voxel in Y and Z, a central 4 x 128 x 128 block, and the full output of a
small seeded-noise input (network-only check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.converters.monai_unet import SPINE_CONFIG, seeded_state_dict  # noqa: E402

SEED = 1515
CASE = "case02"
SPACING = (4.4, 0.78, 0.78)
SIZE = (16, 400, 400)
#: central block of the network grid (X, Y, Z slices) and the stride of the sparse sample
BLOCK = (slice(6, 10), slice(136, 264), slice(136, 264))
STRIDE = 8
#: the network-only input: seeded standard-normal noise of this shape (X, Y, Z)
NOISE_SHAPE = (16, 32, 48)


def build_reference(seed: int):
    import torch
    from monai.networks.nets import UNet

    cfg = SPINE_CONFIG
    net = UNet(spatial_dims=3, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
               channels=cfg["channels"], strides=cfg["strides"], num_res_units=cfg["num_res_units"])
    state = {k: torch.from_numpy(v) for k, v in seeded_state_dict(seed).items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def fastmonai_input(path: Path) -> tuple[np.ndarray, dict]:
    """The network input ``(16, 400, 400)`` as fastMONAI's inference makes it (module docstring)."""
    import torchio as tio

    img = tio.ScalarImage(str(path))
    img = tio.ToCanonical()(img)
    info = {"canonical_shape": list(img.shape[1:]), "canonical_spacing": [float(s) for s in img.spacing],
            "orientation": "".join(img.orientation)}
    if not all(np.isclose(img.spacing, SPACING)):
        img = tio.Resample(list(SPACING))(img)
    info.update(resampled_shape=list(img.shape[1:]), resampled_dtype=str(img.data.dtype))
    img = tio.ZNormalization()(img)
    img = tio.CropOrPad(list(SIZE), padding_mode=0)(img)
    return img.data[0].numpy().astype(np.float32), info


def probability(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = net(torch.from_numpy(x[None, None].astype(np.float32)))
        return torch.softmax(logits, dim=1)[0, 1].numpy().astype(np.float32)


#: Random projections stored instead of the network input's voxels.
PROJECTIONS = 256


def input_projection(x_strided: np.ndarray) -> np.ndarray:
    """``R @ x`` for ``PROJECTIONS`` rows of seeded N(0, 1/n) entries (float64)."""
    v = np.asarray(x_strided, np.float64).ravel()
    rows = np.random.default_rng(SEED).standard_normal((PROJECTIONS, v.size)) / np.sqrt(v.size)
    return rows @ v


def main(argv=None) -> int:
    import monai
    import torch
    import torchio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "spine_chu"))
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "spine_parity"))
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)  # nothing random is drawn by torch; recorded for completeness
    net = build_reference(SEED)

    noise = np.random.default_rng(SEED).standard_normal(NOISE_SHAPE).astype(np.float32)
    noise_prob = probability(net, noise)

    image = Path(args.data) / CASE / "image.nii.gz"
    x, info = fastmonai_input(image)
    prob = probability(net, x)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "reference.npz",
        noise_probability=noise_prob,
        probability_strided=prob[:, ::STRIDE, ::STRIDE],
        probability_block=prob[BLOCK],
        # no image voxels in the repository: 256 seeded random projections of the strided
        # network input (the test regenerates the rows; input_rms_difference)
        input_projection=input_projection(x[:, ::STRIDE, ::STRIDE]),
    )
    record = {
        "seed": SEED, "case": CASE, "image": f"spine_chu/{CASE}/image.nii.gz",
        "monai_config": {k: list(v) if isinstance(v, tuple) else v for k, v in SPINE_CONFIG.items()},
        "state_dict": [[k, list(v.shape)] for k, v in net.state_dict().items()],
        "spacing_mm": list(SPACING), "size": list(SIZE), "stride": STRIDE,
        "input_projection": {"n": PROJECTIONS, "seed": SEED},
        "block": [[s.start, s.stop] for s in BLOCK], "noise_shape": list(NOISE_SHAPE),
        "input_mean": float(x.mean()), "input_std": float(x.std()), **info,
        "probability_range": [float(prob.min()), float(prob.max())],
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "torchio": torchio.__version__,
                     "numpy": np.__version__},
        "made_by": "tools/make_spine_parity_fixture.py",
    }
    (out / "fixture.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("case", "resampled_shape", "resampled_dtype", "probability_range",
                                            "versions")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
