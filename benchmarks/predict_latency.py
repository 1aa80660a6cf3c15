"""Prediction latency on CPU: the zoo's prediction against a plain baseline, in one run.

    python benchmarks/predict_latency.py                       # wmh_ensemble, spine_vertebrae, claustrum_multiview
    python benchmarks/predict_latency.py --entries wmh_ensemble --repeats 5 --json runs/latency.json
    python benchmarks/predict_latency.py --entries wmh_ensemble --backend keras default   # each step's ratio

For each entry, on a real scan from ``../shared/data`` (or ``$ZOO_SHARED_DATA``):

* **baseline**: the entry's own pipeline, but every ensemble member called separately with
  ``keras.Model.predict`` in float32 on every slice/window (``wmh_ensemble``: card option
  ``skip_slices=none``, i.e. the end-slice band is predicted and then zeroed, as the authors'
  code does);
* **ours**, once per ``--backend`` given (the steps; each step's ratio is printed):
  ``default``: ``zoo.load(...)`` without options, what a user gets (``wmh_ensemble``: card
  ``inference.backend: auto``, onnxruntime when installed; the end-slice band, zeroed anyway,
  and brainless slices are not run); ``onnx``: onnxruntime; ``keras``: the members fused into
  one Keras graph, batched.

All run once to warm up (graph tracing, session creation; on a central slab of
``WARMUP_SLICES`` slices), then ``--repeats`` times,
interleaved (baseline, ours, baseline, ...) so that load from other processes hits both
alike; the median seconds per volume are reported with their ratio, the peak resident memory
above the level before the run (sampled every 10 ms from /proc), the network FLOPs
(multiply-adds x 2 of the convolution/dense layers, counted from the Keras layers' shapes)
and the achieved GFLOP/s, and the Dice of ours' label map against the baseline's.
bfloat16 is used only if the CPU has AVX512-BF16/AMX (it is reported; the check is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("ZOO_SHARED_DATA", REPO.parent / "shared" / "data"))

#: entry -> (variant, {input name: path relative to the data folder}).
CASES: dict[str, tuple[str | None, dict[str, str]]] = {
    "wmh_ensemble": (None, {"flair": "open_ms/mni/patient19/flair.nii.gz",  # default variant flair_t1
                            "t1": "open_ms/mni/patient19/t1.nii.gz"}),
    "spine_vertebrae": (None, {"t2": "spine_chu/case02/image.nii.gz"}),
    "claustrum_multiview": (None, {"t1": "ixi002/t1.nii.gz"}),
}
#: Axial slices of the warm-up run (central slab of the input).
WARMUP_SLICES = 24
#: Options of the baseline run per entry (every slice through the network).
BASELINE_OPTIONS = {"wmh_ensemble": {"skip_slices": "none"}}


# --- counting and memory ---------------------------------------------------------------------------
class Counted:
    """Wraps a member (Keras model or ONNX session) and counts the samples it was run on."""

    def __init__(self, member: Any, call: str = "predict"):
        self.member, self.call, self.samples = member, call, 0
        self.name = getattr(member, "name", "member")

    def _n(self, x: Any) -> int:
        return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        self.samples += self._n(x)
        if self.call == "predict":  # the baseline: keras.Model.predict, float32, one member at a time
            return np.asarray(self.member.predict(x, verbose=0, batch_size=max(1, self._n(x))))
        return np.asarray(self.member(x, training=False))

    predict_on_batch = __call__

    def predict(self, x: Any, batch_size: int = 32, verbose: Any = 0) -> np.ndarray:
        return self(x)


class PeakRSS:
    """Peak resident set size (bytes) of this process above its level at start, sampled from
    ``/proc/self/statm`` every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm", encoding="utf-8") as fh:
            return int(fh.read().split()[1]) * self._page

    def __enter__(self) -> "PeakRSS":
        self.start = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self.start)


def layer_flops(model: Any) -> int:
    """FLOPs (2 x multiply-adds) of one sample through ``model``'s Conv/Dense layers, from the
    layers' kernel and output shapes (nested models included). Pooling, activations and
    normalisation are not counted (they are a few percent of a U-Net's convolutions)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += layer_flops(layer)
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        out = layer.output.shape[1:-1] if len(layer.output.shape) > 2 else ()
        k = np.asarray(kernel.shape)
        if "Transpose" in type(layer).__name__:  # kernel (..., out, in): cost per input position
            out = layer.input.shape[1:-1]
        total += 2 * int(np.prod(k)) * int(np.prod(out or (1,)))
    return int(total)


def cpu_flags() -> str:
    """The SIMD flags of the CPU that matter for inference (Linux /proc/cpuinfo), e.g. ``avx2 fma``."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8").split())
    except OSError:
        return "unknown"
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def bf16_supported() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of ``a > 0`` and ``b > 0`` (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


def label_output(pred: Any) -> np.ndarray:
    """The prediction's first integer (label) image as an array."""
    for img in pred.images.values():
        if np.issubdtype(img.get_data_dtype(), np.integer):
            return np.asarray(img.dataobj)
    return np.asarray(next(iter(pred.images.values())).dataobj) > 0.5


# --- one entry ---------------------------------------------------------------------------------------
def _load_models(entry: str, variant: str | None, backends: list[str]):
    """(baseline model, {step name: model}, weights note): same card, same weights.

    A step is ``default`` (``zoo.load`` without a backend: the card's choice), ``keras`` or
    ``onnx``; its members are wrapped in :class:`Counted`."""
    import zoo
    from zoo import errors
    from zoo.model import ZooModel

    kw: dict[str, Any] = {"variant": variant}
    try:
        zoo.card(entry).variant(variant)
        first = zoo.load(entry, backend="keras", **kw)
        note = "card weights"
    except errors.WeightsNotAvailableError:
        kw["weights"] = None
        first = zoo.load(entry, backend="keras", **kw)
        note = "untrained (no weights shipped; timing only)"
    card = first.card.with_options(BASELINE_OPTIONS.get(entry)) if entry in BASELINE_OPTIONS else first.card
    base = ZooModel(card, first.variant, [Counted(m, "predict") for m in first.keras_models], first._entry,
                    first.weights_source, keras_models=first.keras_models)
    steps = {}
    for step in backends:
        m = zoo.load(entry, **kw) if step == "default" else zoo.load(entry, backend=step, **kw)
        if m.backend != "keras":  # Keras members stay bare: they are fused into one graph
            m = ZooModel(m.card, m.variant, [Counted(x, "call") for x in m.models], m._entry,
                         m.weights_source, backend=m.backend, keras_models=m.keras_models)
        steps[step] = m
    return base, steps, note


def _timed(model: Any, inputs: dict[str, Any]) -> tuple[float, int, Any]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        pred = model.predict(inputs)
        seconds = time.perf_counter() - t0
    return seconds, mem.peak, pred


def central_slab(vol: Any, n: int) -> Any:
    """The central ``n`` slices of a Volume along voxel axis k, placed where they were."""
    from zoo.io import Volume

    k0 = max(0, (vol.shape[2] - n) // 2)
    aff = vol.affine.copy()
    aff[:3, 3] = vol.affine[:3, :3] @ [0, 0, k0] + vol.affine[:3, 3]
    header = vol.header.copy()
    header.set_qform(aff)
    header.set_sform(aff)
    return Volume(np.ascontiguousarray(vol.array[:, :, k0:k0 + n]), aff, header, vol.source)


def bench_entry(entry: str, repeats: int, backends: list[str], slab: int | None = None,
                budget_s: float | None = None, warmup_slices: int = WARMUP_SLICES) -> dict[str, Any]:
    """Time the baseline and each step (``backends``) on the entry's case; returns the figures.

    ``budget_s`` stops the timed repeats early (after at least one) when the next pair of runs
    would end past it; the number of runs used is reported."""
    from zoo.io import read_volume

    variant, files = CASES[entry]
    paths = {k: DATA / v for k, v in files.items()}
    inputs = {k: read_volume(p, k) for k, p in paths.items()}  # read once: time the prediction
    if slab:
        inputs = {k: central_slab(v, slab) for k, v in inputs.items()}
    base, steps, note = _load_models(entry, variant, backends)
    models = {"baseline": base, **steps}
    flops_per_sample = [layer_flops(m) for m in base.keras_models]
    runs: dict[str, list[float]] = {name: [] for name in models}
    mem: dict[str, int] = {name: 0 for name in models}
    preds: dict[str, Any] = {}
    samples: dict[str, int] = {}
    warm = {k: central_slab(v, min(warmup_slices, v.shape[2])) for k, v in inputs.items()}
    t_start = time.perf_counter()
    for i in range(repeats + 1):  # run 0 is the warm-up, on a slab (graph tracing, sessions)
        if i > 1 and budget_s is not None:
            pair = sum(r[-1] for r in runs.values())
            if time.perf_counter() - t_start + pair > budget_s:
                print(f"  {entry}: time budget reached, {i - 1} timed run(s) of {repeats}", flush=True)
                break
        for name, model in models.items():
            for m in model.models:
                if isinstance(m, Counted):
                    m.samples = 0
            seconds, peak, pred = _timed(model, inputs if i else warm)
            samples[name] = sum(getattr(m, "samples", 0) for m in model.models) or (
                int(pred.qc.get("slices_run", 0)) * len(model.models))  # fused Keras graph: from QC
            if i:
                runs[name].append(seconds)
                mem[name] = max(mem[name], peak)
            preds[name] = pred
            print(f"  {entry} {name} run {i}{' (warm-up)' if not i else ''}: {seconds:.2f} s", flush=True)
    per_sample = float(np.mean(flops_per_sample))
    res: dict[str, Any] = {"entry": entry, "variant": base.variant, "weights": note,
                           "input": {k: str(v.relative_to(DATA)) for k, v in paths.items()},
                           "shape": list(next(iter(inputs.values())).shape),
                           "steps": {k: m.backend for k, m in steps.items()},
                           "repeats": len(runs["baseline"]), "slab": slab,
                           "gflop_per_sample_per_member": per_sample / 1e9}
    for name in runs:
        med = statistics.median(runs[name])
        gflop = per_sample * samples[name] / 1e9
        res[name] = {"seconds": med, "runs": [round(s, 3) for s in runs[name]],
                     "peak_rss_mb": mem[name] / 2**20, "network_samples": samples[name],
                     "gflop": gflop, "gflop_per_s": gflop / med}
    for name in steps:
        res[name]["ratio"] = res[name]["seconds"] / res["baseline"]["seconds"]
        res[name]["dice_vs_baseline"] = dice(label_output(preds[name]), label_output(preds["baseline"]))
        res[name]["backend"] = steps[name].backend
    return res


#: The head of ``--skull-stripping``: 1 mm isotropic, 256 x 256 x 256 voxels (``data/README.md``).
HEAD = "heads/brainchop_t1crop_t1w/image.nii.gz"


def bench_skull_stripping(weights: str | None, repeats: int, out_dir: Path) -> dict[str, Any]:
    """Read-to-write seconds of ``skull_stripping`` on one 1 mm head (the paper's figure: 1.38 s
    per image on its CPU, Kaliyugarasan et al. 2020 section 3): ``predict`` from the file path
    (read included), then ``Prediction.save`` of the three outputs; median of ``repeats`` after
    one warm-up. ``weights``: a folder/file of trained weights, or ``None`` for the card's."""
    import shutil

    import zoo

    model = zoo.load("skull_stripping", weights="default" if weights is None else weights)
    path = str(DATA / HEAD)
    times, stages = [], []
    for i in range(repeats + 1):
        target = out_dir / f"run{i}"
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        pred = model.predict(path)
        pred.save(target)
        if i:
            times.append(time.perf_counter() - t0)
            stages.append(dict(pred.timing_s))
    med = statistics.median(times)
    return {"entry": "skull_stripping", "input": HEAD, "seconds_read_to_write": med, "repeats": repeats,
            "stages_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
            "brain_ml": pred.volumes_ml["brain"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (median)")
    p.add_argument("--backend", nargs="+", choices=["default", "onnx", "keras"], default=["default"],
                   help="the steps timed against the baseline (default: default = zoo.load without options)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="per entry: stop the repeats early (after one) if the next would end past it")
    p.add_argument("--warmup-slices", type=int, default=WARMUP_SLICES, metavar="N",
                   help=f"slices of the warm-up run (default {WARMUP_SLICES}; a loaded machine: fewer)")
    p.add_argument("--slab", type=int, default=None, metavar="N",
                   help="time only the central N slices along voxel axis k (smoke tests; default: whole volume)")
    p.add_argument("--skull-stripping", action="store_true",
                   help="also time skull_stripping read to write on a 1 mm 256^3 head, with its ratio to the "
                        "first entry's default path (run wmh_ensemble with it)")
    p.add_argument("--skull-stripping-weights", default=None, metavar="PATH",
                   help="trained skull_stripping weights (default: the card's)")
    args = p.parse_args(argv)
    if not (DATA / "README.md").is_file():
        print(f"real scans not found at {DATA} (set ZOO_SHARED_DATA)", file=sys.stderr)
        return 2
    print(f"CPU flags: {cpu_flags()}; load average at start: {load_average()} (1, 5, 15 min)")
    print(f"CPU cores: {os.cpu_count()}, bfloat16 in hardware: {bf16_supported()} "
          f"({'not used: no AVX512-BF16/AMX, it would be emulated and slower' if not bf16_supported() else 'available'})")
    results = []
    for entry in args.entries:
        r = bench_entry(entry, args.repeats, args.backend, args.slab,
                        None if args.budget_minutes is None else 60 * args.budget_minutes,
                        args.warmup_slices)
        results.append(r)
        b = r["baseline"]
        print(f"{entry} ({r['variant']}, {r['weights']}, input {r['shape']}, median of {r['repeats']} run(s)): "
              f"baseline {b['seconds']:.2f} s/volume, peak RSS +{b['peak_rss_mb']:.0f} MB, "
              f"{b['network_samples']} member-samples, {b['gflop_per_s']:.1f} GFLOP/s; network "
              f"{r['gflop_per_sample_per_member']:.2f} GFLOP per sample per member", flush=True)
        for name in args.backend:
            o = r[name]
            print(f"  step {name} ({o['backend']}): {o['seconds']:.2f} s/volume, ratio {o['ratio']:.3f}, "
                  f"Dice vs baseline {o['dice_vs_baseline']:.4f}; peak RSS +{o['peak_rss_mb']:.0f} MB, "
                  f"{o['network_samples']} member-samples, {o['gflop_per_s']:.1f} GFLOP/s", flush=True)
    if args.skull_stripping:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            h = bench_skull_stripping(args.skull_stripping_weights, args.repeats, Path(tmp))
        ref = results[0][args.backend[0]]["seconds"] if results else None
        ratio = f", {h['seconds_read_to_write'] / ref:.3f}x the {results[0]['entry']} {args.backend[0]} path" if ref else ""
        print(f"skull_stripping ({h['input']}): {h['seconds_read_to_write']:.2f} s per head read to write "
              f"(median of {h['repeats']}; stages {', '.join(f'{k} {v:.2f} s' for k, v in h['stages_s'].items())})"
              f"{ratio}; paper: 1.38 s on its CPU", flush=True)
        results.append(h)
    print(f"load average at end: {load_average()} (1, 5, 15 min)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
