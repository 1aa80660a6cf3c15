"""What a user sees on the terminal (issue 19, part 1): no TensorFlow start-up lines and no word
"error" on a normal run; one device line for commands that run a network; ``--verbose`` sets the
framework's log level back to everything (checked by hand: the absl/CUDA lines return)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from zoo import terminal

REPO = Path(__file__).resolve().parent.parent
#: Lines a fresh TensorFlow import prints on a machine without a GPU (as seen with TF 2.20/2.21).
FRAMEWORK_LINE = re.compile(r"tensorflow|absl|cuInit|cuda|^[IWEF]\d{4} ", re.IGNORECASE)


def fresh_env() -> dict[str, str]:
    """The environment of a new shell: no TensorFlow log level set by the caller or by CI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP_", "ZOO_BACKEND"))}
    env["PYTHONWARNINGS"] = "default"  # warnings visible, as in a user's shell
    return env


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=fresh_env())


def test_zoo_list_prints_no_framework_lines():
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any(line.split()[:1] == ["wmh_ensemble"] for line in lines)
    assert not [ln for ln in lines if FRAMEWORK_LINE.search(ln)], proc.stderr
    assert "error" not in (proc.stdout + proc.stderr).lower()


def test_noise_filter_keeps_other_lines():
    banner = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
    cuinit = ("E0000 00:00:1796234251.833201    7912 cuda_platform.cc:52] failed call to cuInit: "
              "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
    assert terminal.is_noise(banner) and terminal.is_noise(cuinit)
    assert not terminal.is_noise("E0000 00:00:1.0  1 conv_ops.cc:10] Invalid argument: shapes differ")
    assert not terminal.is_noise("zoo: error: input flair.nii.gz not found")


def test_filtered_stderr_drops_noise_only(capfd):
    with terminal.filtered_stderr():
        os.write(2, b"I0000 00:00:1.0  1 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"something real went wrong\n")
    err = capfd.readouterr().err
    assert err.splitlines() == ["something real went wrong"]


@pytest.mark.slow
def test_predict_prints_one_device_line_and_no_framework_lines(tmp_path):
    """A real ``zoo predict`` in a fresh process (untrained FLAIR-only network on a tiny volume)."""
    rng = np.random.default_rng(0)
    data = np.zeros((40, 40, 2), np.float32)
    data[8:32, 6:34, :] = 50.0 + 20.0 * rng.random((24, 28, 2), dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), str(tmp_path / "flair.nii.gz"))
    args = ["predict", "wmh_ensemble", "--untrained", "--variant", "flair", "--option",
            "mask_method=nonzero", "--input", "flair=flair.nii.gz"]
    quiet = run_cli(*args, "-o", "out", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    err = [ln for ln in quiet.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and re.fullmatch(r"zoo: (CPU, \d+ threads?|GPU x\d+), float32 \(TensorFlow\)",
                                          err[0]), quiet.stderr
    assert "error" not in (quiet.stdout + quiet.stderr).lower()
    assert (tmp_path / "out" / "wmh.nii.gz").is_file()



def test_verbose_sets_the_framework_log_level(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    terminal.configure(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == terminal.VERBOSE_LEVEL == "0"
    terminal.configure(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == terminal.QUIET_LEVEL
