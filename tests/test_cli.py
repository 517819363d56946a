"""Command lines: a mistyped --config field is one plain error line, not a traceback."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [
    # Default config file: the override is resolved when the flag is defined.
    ["attack.identity_membership", "--workdir=unused", "--config.num_sampels=3"],
    # --config=FILE: the override is resolved when the flags are parsed.
    ["train.train_gan", "--workdir=unused", "--config=train/configs/gan_tiny.py",
     "--config.model.z_dimm=3"],
])
def test_unknown_config_field_is_named(command):
  result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  field = command[-1].split("=")[0]
  assert "unknown config field" in result.stderr and field in result.stderr, result.stderr
