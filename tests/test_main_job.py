"""The main job end to end at toy size: every stage, its outputs, and a rerun that reuses them."""

import json
import subprocess
import sys

import numpy as np

from attack.configs import calibration as calibration_config, main_job_tiny
from gmia import metrics
from gmia.attacks import calibration, likelihood_ratio
from gmia.jobs import calibration as calibration_job


def _run_all(workdir, data_dir):
  return subprocess.run(
      [sys.executable, "-m", "attack.main_job", f"--workdir={workdir}",
       "--config=attack/configs/main_job_tiny.py", f"--config.data.data_dir={data_dir}"],
      capture_output=True, text=True, timeout=600, check=True).stdout


def test_main_job_runs_every_stage_then_reuses_them(toy_main_job):
  workdir, data_dir, first = toy_main_job
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

  second = _run_all(workdir, data_dir)
  assert all(f"[{stage}] cached" in second for stage in stages), second
  assert json.loads((workdir / "summary.json").read_text()) == summary


def test_calibration_job_on_the_main_job_with_shadows(toy_main_job, tmp_path):
  """Every variant for the target, the control and the two null generators, the likelihood
  ratios included; the plain and likelihood-ratio AUCs recomputed from the attacks' files."""
  main, data_dir, _ = toy_main_job
  config = calibration_config.get_config()
  config.main = main_job_tiny.get_config()
  config.main.data.data_dir = str(data_dir)
  config.main_workdir = str(main)
  config.reference_people = 2
  config.shadows.update(num_shadows=2, people_per_shadow=2)
  summary = calibration_job.run(config, str(tmp_path / "calibration"))
  reports = summary["metrics"]
  assert set(reports) == set(calibration_job.GENERATORS)
  expected = set(calibration.variant_names(shadows=True))
  assert set(reports["target"]) == expected and set(reports["untrained"]) == expected
  target = calibration.read_scores(str(main / "attack"))
  main_report = json.loads((main / "attack" / "report.json").read_text())
  assert reports["target"]["best"]["auc"] == main_report["metrics"]["best"]["auc"]
  # best-lira from the shadows' own scores.csv, by the likelihood-ratio functions directly.
  shadow_scores = [calibration.read_scores(str(tmp_path / "calibration" / "shadows" /
                                               f"shadow_{k}" / "attack")).aligned_to(target)
                   for k in range(2)]
  design = json.loads((tmp_path / "calibration" / "shadows" / "shadows.json").read_text())
  order = [design["tested"].index(int(name)) for name in target.identity]
  seen = np.asarray(design["seen"], bool)[:, order]
  fit = likelihood_ratio.fit_gaussians(np.stack([s.scores["best"] for s in shadow_scores]), seen,
                                       transform="arctanh")
  lira = likelihood_ratio.online_scores(fit, target.scores["best"])
  assert reports["target"]["best-lira"]["auc"] == metrics.auc(lira, target.is_member)
  assert "-lira:" in (tmp_path / "calibration" / "calibration.md").read_text()
