"""The result of a prediction: outputs as images on the input's own grid, volumes and QC."""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import nibabel as nib

from zoo import errors
from zoo.io import _refuse_protected, publish
from zoo.terminal import cpu_threads

if TYPE_CHECKING:  # pandas is imported only by entries that return a table
    import pandas


@dataclass
class Prediction:
    """Outputs of one prediction.

    Attributes:
        images: output name -> ``nibabel.Nifti1Image`` on the reference input's grid, with its
            affine and a copy of its header (e.g. ``"wmh"`` uint8 labels and
            ``"wmh_probability"`` float32 for ``wmh_ensemble``).
        volumes_ml: structure name -> volume in millilitres (mL), from the label outputs.
        qc: quality-control values and flags (e.g. ``{"brain_slices": 140}``).
        timing_s: seconds spent per stage (``read``, ``preprocess``, ``network``, ``invert``).
        entry, variant, card_version: what produced it.
        input_paths: input files; :meth:`save` refuses to overwrite any of them.
        table: optional per-object results as a ``pandas.DataFrame`` (e.g. one row per nodule
            for ``lung_nodule``); :meth:`save` writes it as ``<prefix>table.csv``.
        network_grid: in-memory arrays on the network's own grid, for scoring on the grid the
            published numbers use (``spine_vertebrae``: ``"probability"`` ``(X, Y, Z)`` float32
            and the pipeline ``"state"``); never written by :meth:`save` or :meth:`to_dict`.
    """

    images: dict[str, nib.Nifti1Image]
    volumes_ml: dict[str, float]
    entry: str
    variant: str
    card_version: str
    qc: dict[str, Any] = field(default_factory=dict)
    timing_s: dict[str, float] = field(default_factory=dict)
    input_paths: list[Path] = field(default_factory=list)
    table: "pandas.DataFrame | None" = None
    network_grid: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no voxel data); with a :attr:`table`, its rows as ``"table"``."""
        out = {"entry": self.entry, "variant": self.variant, "card_version": self.card_version,
               "volumes_ml": dict(self.volumes_ml), "qc": dict(self.qc),
               "timing_s": {k: round(v, 3) for k, v in self.timing_s.items()},
               "outputs": sorted(self.images), "inputs": [str(p) for p in self.input_paths]}
        if self.table is not None:
            out["table"] = json.loads(self.table.to_json(orient="records"))
        return out

    def save(self, out_dir: str | os.PathLike, prefix: str = "", *,
             filenames: Mapping[str, str] | None = None, sidecars: Mapping[str, str] | None = None,
             summary: bool = True) -> dict[str, Path]:
        """Write every output as ``<out_dir>/<prefix><name>.nii.gz`` plus
        ``<prefix>prediction.json`` (the :meth:`to_dict` summary) and, when there is a
        :attr:`table`, ``<prefix>table.csv``.

        Args:
            filenames: output name -> file name in ``out_dir``, replacing the default name
                (e.g. BIDS-derivative names, :mod:`zoo.bids_io`).
            sidecars: file name -> text of extra files written with the outputs (JSON sidecars).
            summary: write ``<prefix>prediction.json``.

        All files are first written to temporary files in ``out_dir`` and renamed only when
        every one of them was written, so a failure leaves no partial output behind.

        Returns:
            output name (and ``"summary"``, ``"table"``, each sidecar's file name) -> written path.
        Raises:
            OutputError: a destination is an input file, or ``out_dir`` is not a folder.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise errors.OutputError(f"output folder {out} exists and is not a folder")
        filenames, sidecars = dict(filenames or {}), dict(sidecars or {})
        targets = {name: out / filenames.get(name, f"{prefix}{name}.nii.gz") for name in self.images}
        if summary:
            targets["summary"] = out / f"{prefix}prediction.json"
        if self.table is not None:
            targets["table"] = out / f"{prefix}table.csv"
        targets.update({name: out / name for name in sidecars})
        for dest in targets.values():
            _refuse_protected(dest, self.input_paths)
        out.mkdir(parents=True, exist_ok=True)
        temps: dict[str, str] = {}
        try:
            for name, dest in targets.items():
                suffix = {"summary": ".json", "table": ".csv"}.get(name, ".nii.gz")
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=out)
                os.close(fd)
                temps[name] = tmp
                if name in sidecars:
                    Path(tmp).write_text(sidecars[name], encoding="utf-8")
                elif name == "summary":
                    Path(tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
                elif name == "table":
                    self.table.to_csv(tmp, index=False, encoding="utf-8")
            # gzip compression releases the GIL: the images are written side by side
            images = [name for name in temps if name in self.images and name not in sidecars]
            with ThreadPoolExecutor(max(1, min(len(images), cpu_threads()))) as pool:
                for _ in pool.map(lambda name: nib.save(self.images[name], temps[name]), images):
                    pass
            for name, tmp in temps.items():
                publish(tmp, targets[name])
        finally:
            for tmp in temps.values():
                Path(tmp).unlink(missing_ok=True)
        return targets
