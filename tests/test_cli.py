"""Command lines: a mistyped --config field is one plain error line, not a traceback."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [
    # Default config file: the override is resolved when the flag is defined.
    ["attack.membership", "--workdir=unused", "--config.num_sampels=3"],
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


@pytest.mark.parametrize("command,message", [
    (["attack.membership", "--config.encoder_onnx=sface.onnx"],
     "--config.encoder_onnx is now --config.matcher.path"),
    (["attack.feature_inversion", "--config.judge_preset=sface"],
     "--config.judge_preset is now --config.judge.preset"),
    (["attack.feature_inversion", "--config.generator_workdir=runs/demo/gan"],
     "--config.generator_workdir is now --config.generator=gmia:WORKDIR"),
])
def test_a_renamed_config_field_names_its_new_spelling(command, message):
  result = subprocess.run([sys.executable, "-m", command[0], "--workdir=unused", *command[1:]],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_missing_checkpoint_is_one_line_and_exit_status_1(tmp_path):
  command = [sys.executable, "-m", "attack.membership", f"--workdir={tmp_path / 'out'}",
             f"--config.generator=gmia:{tmp_path / 'nowhere'}",
             f"--config.matcher.path={tmp_path / 'nowhere'}"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert "Traceback" not in result.stderr and last.startswith("error: no checkpoints in"), last
  assert not (tmp_path / "nowhere").exists()
  verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=120)
  assert verbose.returncode == 1 and "Traceback" in verbose.stderr
