"""Ship a run's weights: copy ``member{i}.npz`` from a run folder into the repository's
``weights/<entry>/<variant>/`` and print the card records (file, sha256, size).

    python -m zoo.training.release runs/wmh_ensemble-flair wmh_ensemble flair [--weights-dir weights]
    python -m zoo.training.release runs/spine-cv-fold1 spine_vertebrae t2 --member 1

``--member N`` ships a one-member run as member ``N`` (ensembles assembled from separate runs,
e.g. the cross-validation fold models of spine_vertebrae, spec section 9).

``--as-variant NAME`` ships a run of ``variant`` under another variant of the same card, which
must have the same architecture (lung_nodule's ``holdout``: the recipe trained on the training
part of a hold-out split only, shipped so its validation figures can be rerun):

    python -m zoo.training.release runs/lung_issue17/holdout/run/phase1 lung_nodule default --as-variant holdout

The files are the trainer's own: float16 weights (``zoo.weights.save_weights``), checked against
the run record's sha256. A run record with ``trained_options`` (the options that set the input,
e.g. lung_nodule's frame) puts them in the printed card records: the card must carry them, so
that ``zoo.load`` predicts at the frame the weights were trained at (``zoo.trained_options``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from zoo import errors
from zoo.weights import sha256_file


def ship(run_dir: str | Path, entry: str, variant: str, weights_dir: str | Path = "weights",
         member: int | None = None, as_variant: str | None = None) -> list[dict]:
    """Copy a run's member weights next to the package and return their card records.

    Verifies each file against the sha256 in the run's ``run_record.json`` before copying.
    ``member``: ship the run's only member as ``member{member}.npz``. ``as_variant``: the
    variant folder and card variant the files go to (default ``variant``); the card's two
    variants must have the same ``architecture``.
    Raises ZooError when the run is incomplete, a checksum differs, ``member`` is given for
    a run of several members, or ``as_variant`` is not a variant of the card with the run's
    architecture.
    """
    run = Path(run_dir)
    record = json.loads((run / "run_record.json").read_text(encoding="utf-8"))
    if record["entry"] != entry or record["variant"] != variant:
        raise errors.ZooError(f"{run} trained {record['entry']}/{record['variant']}, not {entry}/{variant}")
    if member is not None and len(record["members"]) != 1:
        raise errors.ZooError(f"{run} has {len(record['members'])} members; --member needs a one-member run")
    target = as_variant or variant
    if target != variant:
        from zoo import registry

        variants = registry.card(entry)["variants"]
        if target not in variants or variants[target]["architecture"] != variants[variant]["architecture"]:
            raise errors.ZooError(f"{entry}: {target!r} is not a variant with the architecture of {variant!r}")
    dest = Path(weights_dir) / entry / target
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for m in record["members"]:
        src = run / m["weights"]["file"]
        if sha256_file(src) != m["weights"]["sha256"]:
            raise errors.ChecksumError(f"{src} differs from the sha256 in {run}/run_record.json")
        index = m["member"] if member is None else int(member)
        name = f"member{index}.npz"
        shutil.copyfile(src, dest / name)
        out.append({"file": f"{entry}/{target}/{name}", "sha256": m["weights"]["sha256"],
                    "size": (dest / name).stat().st_size, "member": index,
                    **({"trained_options": record["trained_options"]} if record.get("trained_options") else {})})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("entry")
    ap.add_argument("variant")
    ap.add_argument("--weights-dir", default="weights")
    ap.add_argument("--member", type=int, default=None, help="ship a one-member run as this member index")
    ap.add_argument("--as-variant", default=None, help="ship under this variant of the card (same architecture)")
    a = ap.parse_args()
    for rec in ship(a.run_dir, a.entry, a.variant, a.weights_dir, a.member, a.as_variant):
        frame = (", trained_options: " + json.dumps(rec["trained_options"]).replace('"', "")
                 if "trained_options" in rec else "")
        print(f"      - {{file: {rec['file']}, sha256: {rec['sha256']}, size: {rec['size']}, member: {rec['member']}{frame}}}")


if __name__ == "__main__":
    main()
