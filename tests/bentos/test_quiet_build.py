"""A build shows its own progress, not the converters' logs; ``--verbose`` shows those too.

The digits example at int8 for both targets wakes every noisy part: TensorFlow's import
(absl, oneDNN), the TFLite converter's ``fully_quantize`` line, the TFLite interpreter's
deprecation warning and XNNPACK line, ONNX Runtime's quantization hint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NOISE = ("absl", "oneDNN", "fully_quantize", "XNNPACK", "deprecated", "pre-processing before quantization",
         "cli.py:")


def _build(example: dict[str, Path], name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true")
    return subprocess.run([sys.executable, "-m", "bentoedge", "build", str(example["model"]), "--name", name,
                           "--calibration", str(example["calibration"]), "--validation", str(example["validation"]),
                           "--edge", "int8", "--cloud", "int8", *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def test_a_build_prints_its_steps_and_no_converter_noise(digits_example: dict[str, Path], keys_home: Path) -> None:
    quiet = _build(digits_example, "quiet")
    out = quiet.stdout + quiet.stderr
    assert quiet.returncode == 0, out[-3000:]
    for step in ("opening", "converting edge-int8 (TFLite)", "converting cloud-int8 (ONNX)", "quality gate on",
                 "encrypting and signing quiet:v1"):
        assert step in quiet.stderr, out[-3000:]
    assert "sealed quiet:v1" in quiet.stdout
    leaked = [word for word in NOISE if word in out]
    assert not leaked, out[-3000:]

    loud = _build(digits_example, "loud", "--verbose")
    assert loud.returncode == 0
    assert any(word in loud.stdout + loud.stderr for word in NOISE[:-1])  # the same build, unfiltered
