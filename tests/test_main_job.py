"""The main job end to end at toy size: every stage, its outputs, and a rerun that reuses them."""

import json
import subprocess
import sys


def _run_all(workdir, data_dir):
  return subprocess.run(
      [sys.executable, "-m", "attack.main_job", f"--workdir={workdir}",
       "--config=attack/configs/main_job_tiny.py", f"--config.data.data_dir={data_dir}"],
      capture_output=True, text=True, timeout=600, check=True).stdout


def test_main_job_runs_every_stage_then_reuses_them(tmp_path):
  workdir = tmp_path / "demo"
  first = _run_all(workdir, tmp_path / "data")
  stages = ("face_encoder", "gan", "gan_control", "attack", "attack_control")
  for stage in stages:
    assert f"[{stage}] running" in first and (workdir / stage / "DONE").exists(), stage
  for name in ("split.json", "data_overview.png", "summary.json", "attack/matches.png",
               "attack_control/roc.png"):
    assert (workdir / name).exists(), name
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary) == {"attack", "attack_control"}
  assert summary["attack"]["best"]["num_positives"] == 4
  assert "target generator (trained on the members)" in first and "AUC" in first

  second = _run_all(workdir, tmp_path / "data")
  assert all(f"[{stage}] cached" in second for stage in stages), second
  assert json.loads((workdir / "summary.json").read_text()) == summary
