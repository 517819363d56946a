"""Command lines: a mistyped --config field, a config file that fails to load, a missing
checkpoint are one plain error line, not a traceback; other libraries' logs stay out of the
terminal unless --verbose."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


GMIA_FILES = {path.name for folder in ("gmia", "attack", "train")
              for path in pathlib.Path(REPO, folder).rglob("*.py")}
LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", re.M)


def test_library_logs_are_left_out_unless_verbose(models, tmp_path):
  """A command's stderr holds gmia's own lines: no INFO or WARNING line of Orbax (which logs
  every restore), absl or JAX (its backend probing) at default verbosity; --verbose shows them."""
  command = [sys.executable, "-m", "attack.sample", f"--config.generator=gmia:{models[0]}",
             "--config.num=2", "--config.chunk_size=2"]
  quiet = subprocess.run(command + [f"--workdir={tmp_path / 'quiet'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert quiet.returncode == 0, quiet.stderr
  assert set(LOG_LINE.findall(quiet.stderr)) <= GMIA_FILES, quiet.stderr
  verbose = subprocess.run(command + [f"--workdir={tmp_path / 'verbose'}", "--verbose"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  assert verbose.returncode == 0, verbose.stderr
  assert set(LOG_LINE.findall(verbose.stderr)) - GMIA_FILES, verbose.stderr


@pytest.mark.parametrize("config_file,message", [
    ("def get_config():\n  raise RuntimeError('no config here')\n",
     r"fails to load \(line 2\): RuntimeError: no config here"),
    ("import json\n\n\ndef get_config():\n  return json.loads('{')\n",
     r"fails to load \(line 5\): .*JSONDecodeError"),
    ("x = (\n", r"fails to load \(line 1\): SyntaxError"),
    ("", r"has no get_config\(\)"),
    ("def get_config():\n  return None\n", r"get_config\(\) returned None"),
])
def test_a_config_file_that_fails_to_load_is_named_in_one_line(tmp_path, config_file, message):
  path = tmp_path / "config.py"
  path.write_text(config_file)
  result = subprocess.run([sys.executable, "-m", "attack.sample", f"--workdir={tmp_path / 'w'}",
                           f"--config={path}", "--config.num=2"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert f"--config={path}" in last and re.search(message, last), result.stderr
  assert not (tmp_path / "w").exists()
