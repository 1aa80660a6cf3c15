"""Shared harness of the training benchmarks: time ``train_on_batch`` in a fresh subprocess (so
its peak memory is its own) and return the median step time and the peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator

_HEAD = """
import json, resource, statistics, sys, time
import zoo  # first: it turns TensorFlow's oneDNN kernels on (zoo/__init__.py), as in every zoo run
import numpy as np, keras, tensorflow as tf
cfg = json.loads(sys.argv[1])
"""

_TIMED = """
net.train_on_batch(x, y)
times, cpu = [], []
for _ in range(cfg["steps"]):
    t, c = time.perf_counter(), time.process_time(); net.train_on_batch(x, y)
    times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
gpus = tf.config.list_physical_devices("GPU")
peak = (tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpus
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps({"step_s": statistics.median(times), "cpu_s": statistics.median(cpu), "peak_mib": peak,
                  "device": "GPU" if gpus else "CPU"}))
"""


def run_timed(setup: str, cfg: dict) -> dict:
    """Run ``setup`` (Python source that defines a compiled ``net`` and a batch ``x``, ``y``
    from the dict ``cfg``, which must hold ``steps``) in a subprocess: one warm-up step, then
    ``cfg["steps"]`` timed steps. Returns ``{"step_s": median seconds, "cpu_s": median CPU
    seconds of the process per step (user + system, all threads), "peak_mib": peak memory
    (process max RSS on a CPU, TensorFlow's peak allocation on a GPU), "device": "CPU"|"GPU"}``.
    Raises CalledProcessError when the child fails."""
    code = _HEAD + setup + _TIMED
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def native_mixed(device: str, cpu_bf16: bool) -> str | None:
    """The mixed precision that is native on ``device``: ``mixed_float16`` on a GPU,
    ``mixed_bfloat16`` on a CPU with AVX512-BF16/AMX, else None (it would be emulated)."""
    if device == "GPU":
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_bf16 else None


def measured_precisions(requested: Iterable[str], device: Callable[[], str], cpu_bf16: bool,
                        skipped: Callable[[str], None] = print) -> Iterator[str]:
    """The precisions a cost benchmark times, in the order requested: ``float32`` as is;
    ``native`` resolved by :func:`native_mixed` (dropped where there is none); any other mixed
    policy only where it is the native one (else ``skipped`` gets a one-line reason).
    ``device()`` returns "CPU" or "GPU"; it is called before each mixed policy is resolved, so
    the caller can answer from its last timed run and measure only when it has none."""
    for policy in requested:
        if policy != "float32":
            here = device()
            native = native_mixed(here, cpu_bf16)
            if policy == "native":
                if native is None:
                    continue
                policy = native
            elif policy != native:
                skipped(f"{policy} not measured: not native on this {here}")
                continue
        yield policy
