"""The privacy job end to end at toy size: a non-private and a DP point trained on the members and
the included canaries, each attacked, the canaries' empirical epsilons recomputed from the
attack's scores, and the release filter's curve."""

import csv
import json

import markupsafe
import numpy as np
import pytest

from attack.configs import privacy_tiny
from gmia.data.split import IdentitySplit
from gmia.jobs import pages, privacy
from gmia.privacy import auditing
from gmia.runs import load_run


def test_privacy_job_at_toy_size(toy_main_job, tmp_path):
  main, data_dir, _ = toy_main_job
  config = privacy_tiny.get_config()
  config.data.data_dir = str(data_dir)
  config.face_encoder_workdir = str(main / "face_encoder")
  summary = privacy.run(config, str(tmp_path))
  names = [p["name"] for p in summary["points"]]
  assert names == ["eps_inf", "eps_50"]
  # The DP point carries its guarantee; epsilon recomputes from its plan.
  plan = load_run(str(tmp_path / "points" / "eps_50" / "gan"), "gan").meta["privacy"]
  assert summary["points"][1]["privacy"] == plan and plan["epsilon"] <= 50.0
  assert summary["points"][0]["privacy"] is None
  canaries = privacy.choose_canaries(IdentitySplit.load(str(tmp_path / "split.json")), config)
  for point in summary["points"]:
    with open(tmp_path / "points" / point["name"] / "attack" / "scores.csv") as handle:
      rows = {row["identity"]: row for row in csv.DictReader(handle)}
    # Included canaries are members of the attack, excluded ones non-members.
    groups = [rows[str(c)]["group"] for c in canaries[0].tolist()]
    assert groups == ["member" if i else "population" for i in canaries[1].tolist()]
    scores = np.array([float(rows[str(c)]["score_best"]) for c in canaries[0].tolist()])
    delta = plan["delta"]
    expected = auditing.threshold_epsilon(scores, canaries[1], delta=delta)
    assert point["audit"]["threshold"]["epsilon"] == expected.epsilon
  # Threshold 1 keeps every sample, and the attack on them is the non-private point's; the
  # toy encoder calls most samples copies at 0.9, too few left to attack.
  everything, strict = summary["filter"]
  assert everything["fraction_kept"] == 1
  assert everything["metrics"]["best"]["auc"] == summary["points"][0]["metrics"]["best"]["auc"]
  assert strict["kept"] < config.attack.topk and strict["metrics"] is None
  for name in ("privacy.md", "privacy.png", "privacy_samples.png", "filter.png"):
    assert (tmp_path / name).exists(), name
  # The page says what privacy.json says: every point's AUC, and the verdict.
  page = (tmp_path / "report.html").read_text()
  report = json.loads((tmp_path / "privacy.json").read_text())
  assert str(markupsafe.escape(report["verdict"])) in page  # As the page's template escapes.
  for row, point in zip(report["rows"], summary["points"]):
    assert row["auc"] == point["metrics"]["best"]["auc"]
    assert pages.format_number(row["auc"]) in page


def test_privacy_job_trains_diffusion_targets(toy_main_job, tmp_path):
  """config.family = "diffusion": the points are DDPMs trained with their own privacy block,
  attacked like the GAN's, and the canary audit reads the diffusion run's plan."""
  main, data_dir, _ = toy_main_job
  config = privacy_tiny.get_config()
  config.update(family="diffusion", epsilons=(50.0,), filter_thresholds=())
  config.data.data_dir = str(data_dir)
  config.face_encoder_workdir = str(main / "face_encoder")
  summary = privacy.run(config, str(tmp_path))
  generator_dir = str(tmp_path / "points" / "eps_50" / "diffusion")
  run = load_run(generator_dir, "diffusion")
  assert not (tmp_path / "points" / "eps_50" / "gan").exists()
  plan = run.meta["privacy"]
  assert summary["points"][0]["privacy"] == plan and plan["epsilon"] <= 50.0
  assert plan["steps"] == config.diffusion.num_steps and plan["r1_steps"] == 0
  report = json.loads((tmp_path / "points" / "eps_50" / "attack" / "report.json").read_text())
  assert report["generator"] == "gmia:" + generator_dir
  assert summary["filter"] == []
  config.family = "vae"
  with pytest.raises(ValueError, match="unknown generator family 'vae'"):
    privacy.run(config, str(tmp_path / "vae"))
