"""What the ``zoo`` command line shows on the terminal: TensorFlow quiet unless ``--verbose``, and
one line saying which device, threads and precision a run uses.

TensorFlow prints start-up messages from C++ before Python code can intervene: absl's
"All log messages before absl::InitializeLog() is called are written to STDERR" banner, CUDA
probing lines ("Could not find cuda drivers", "failed call to cuInit: ... CUDA error") on a
machine without a GPU. ``TF_CPP_MIN_LOG_LEVEL`` must be set before TensorFlow is imported and
does not reach the absl banner, so :func:`import_framework` imports TensorFlow with file
descriptor 2 (stderr) captured and drops only the lines of :data:`NOISE`; any other line is
passed on unchanged, so a real problem is still seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator

#: Start-up lines of TensorFlow/XLA/absl that carry no information for a user (CPU or GPU alike).
NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"^[IWE]\d{4} [\d:. ]+\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|"
               r"cuda_dnn|cuda_fft|cuda_blas|port|cpu_feature_guard|gpu_device|"
               r"computation_placer)\.cc:\d+\]"),
    re.compile(r"^To enable the following instructions: .* in other operations, rebuild TensorFlow"),
    re.compile(r"^oneDNN custom operations are on\."),
)

#: ``TF_CPP_MIN_LOG_LEVEL`` of a normal run (3: C++ errors too; the CLI reports failures itself)
#: and of ``--verbose`` (0: everything).
QUIET_LEVEL, VERBOSE_LEVEL = "3", "0"


def configure(verbose: bool) -> None:
    """Set the framework's log levels; call before TensorFlow is imported.

    Normal runs: ``TF_CPP_MIN_LOG_LEVEL=3``, Python warnings from TensorFlow/Keras/tf2onnx
    hidden, their loggers at ERROR. ``verbose``: ``TF_CPP_MIN_LOG_LEVEL=0`` and nothing hidden.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = VERBOSE_LEVEL if verbose else QUIET_LEVEL
    if verbose:
        return
    for name in ("tensorflow", "keras", "tf2onnx", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "tf2onnx", "onnx", "google.protobuf", "absl"):
        warnings.filterwarnings("ignore", module=module)


def is_noise(line: str) -> bool:
    """True for a start-up line of :data:`NOISE`."""
    return any(p.search(line) for p in NOISE)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes alike) while the block runs, then write
    back every captured line that is not :func:`is_noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines()
                    if ln.strip() and not is_noise(ln)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def import_framework(verbose: bool) -> None:
    """Import TensorFlow (and initialise its devices) once, hiding :data:`NOISE` unless ``verbose``."""
    if "tensorflow" in sys.modules and not verbose:
        return
    ctx = contextlib.nullcontext() if verbose else filtered_stderr()
    with ctx:
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing (CUDA) happens here, inside the filter
        if not verbose:
            tf.get_logger().setLevel(logging.ERROR)
            try:
                from absl import logging as absl_logging

                absl_logging.set_verbosity(absl_logging.ERROR)
            except ImportError:  # absl ships with TensorFlow; nothing to quiet without it
                pass


def cpu_threads() -> int:
    """CPU cores this process may run on (``sched_getaffinity``; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: The start of the CLI's device line (``"zoo: " + device_line(...)``), for tools and tests that
#: read the error lines of a run.
DEVICE_LINE = re.compile(r"^zoo: (CPU|GPU)\b.*\bthreads?\b")


def is_device_line(line: str) -> bool:
    """Whether ``line`` (one line of the CLI's stderr) is the device/threads/precision line."""
    return bool(DEVICE_LINE.match(line))


def device_line(backend: str = "keras", precision: str | None = None) -> str:
    """One line: device, threads, precision and runtime, e.g. ``CPU, 2 threads, float32 (onnxruntime)``.

    ``backend`` ``"keras"``: TensorFlow's visible GPUs (else the CPU) and its intra-op thread
    setting (0 = one per core); ``"onnx"``: onnxruntime on the CPU with ``ZOO_ONNX_THREADS`` or
    one thread per core. ``precision`` defaults to Keras' global dtype policy.
    """
    if precision is None:
        import keras

        precision = keras.mixed_precision.global_policy().name
    if backend == "onnx":
        threads = int(os.environ.get("ZOO_ONNX_THREADS") or 0) or cpu_threads()
        return f"CPU, {threads} thread{'s' * (threads != 1)}, {precision} (onnxruntime)"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return f"GPU x{len(gpus)}, {precision} (TensorFlow)"
    threads = tf.config.threading.get_intra_op_parallelism_threads() or cpu_threads()
    return f"CPU, {threads} thread{'s' * (threads != 1)}, {precision} (TensorFlow)"
