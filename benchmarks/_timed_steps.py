"""Shared harness of the training benchmarks: time ``train_on_batch`` in a fresh subprocess (so
its peak memory is its own) and return the median step time and the peak memory."""

from __future__ import annotations

import json
import subprocess
import sys

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
