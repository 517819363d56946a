"""The sweep end to end at toy size: killed in a point, resumed, then fully cached; its numbers
against direct computations from the attacks' own score files."""

import csv
import json

import numpy as np
import pytest

from attack.configs import sweep_tiny
from gmia.jobs import membership, sweep
from gmia.face_encoder import trainer as encoder_trainer
from gmia.gan import trainer as gan_trainer
from gmia.runs import load_run


def _rows(path):
  with open(path) as handle:
    return list(csv.DictReader(handle))


def _mann_whitney(positives, negatives):
  positives, negatives = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
  return float(np.mean((positives > negatives) + 0.5 * (positives == negatives)))


@pytest.fixture
def counted(monkeypatch):
  """Counts trainings and attacks; `kill` names an attack workdir that raises instead."""
  calls = {"train": 0, "attack": 0, "kill": None}
  for module in (gan_trainer, encoder_trainer):
    original = module.train_and_evaluate

    def train(config, workdir, original=original):
      calls["train"] += 1
      return original(config, workdir)
    monkeypatch.setattr(module, "train_and_evaluate", train)
  attack = membership.run

  def run(config, workdir):
    if workdir == calls["kill"]:
      raise KeyboardInterrupt
    calls["attack"] += 1
    return attack(config, workdir)
  monkeypatch.setattr(membership, "run", run)
  return calls


def test_sweep_resumes_after_a_kill_and_reports_what_its_attacks_scored(tmp_path, counted):
  config = sweep_tiny.get_config()
  config.data.data_dir = str(tmp_path / "data")
  workdir = tmp_path / "sweep"
  names = [p.name for p in sweep.grid_points(config)]
  assert names == ["m3_p1_s2_over1xall", "m3_p3_s2_over1xall"]
  counted["kill"] = str(workdir / "points" / names[1] / "attack")
  with pytest.raises(KeyboardInterrupt):
    sweep.run(config, str(workdir))
  assert counted["train"] == 4 and counted["attack"] == 2  # Encoder, control, two targets.
  assert (workdir / "points" / names[1] / "gan" / "DONE").exists()
  assert not (workdir / "points" / names[1] / "attack" / "DONE").exists()

  counted.update(train=0, attack=0, kill=None)
  summary = sweep.run(config, str(workdir))
  assert counted["train"] == 0 and counted["attack"] == 1
  # 6 photos per identity, 2 of them references: up to 4 for training; one member has all 4.
  assert [p["training_photos"] for p in summary["points"]] == [2 * 1 + 4, 2 * 3 + 4]
  control = _rows(workdir / "control" / "members_3" / "scores.csv")
  for point in summary["points"]:
    scores = _rows(workdir / "points" / point["name"] / "attack" / "scores.csv")
    member = np.array([r["group"] == "member" for r in scores])
    best = np.array([float(r["score_best"]) for r in scores])
    by_id = {r["identity"]: float(r["score_best"]) for r in control}
    ref = best - np.array([by_id[r["identity"]] for r in scores])
    assert point["metrics"]["best"]["auc"] == pytest.approx(_mann_whitney(best[member],
                                                                          best[~member]))
    assert point["metrics"]["best-ref"]["auc"] == pytest.approx(_mann_whitney(ref[member],
                                                                              ref[~member]))
    exposure = _rows(workdir / "points" / point["name"] / "exposure.csv")
    negatives = best[~member]
    for row, score, is_member in zip(exposure, best, member):
      population = negatives if is_member else np.delete(negatives, np.flatnonzero(
          negatives == score)[0])
      expected = (1 + np.sum(population >= score)) / (1 + len(population))
      assert float(row["p_value"]) == pytest.approx(expected, abs=1e-6)
    assert sorted(int(r["photos_in_training"]) for r in exposure if r["group"] == "member") == (
        sorted([min(point["photos"], 4)] * 2 + [4]))
  table = (workdir / "sweep.md").read_text()
  assert table.count("\n| 3 (1 with all) |") == 2 and (workdir / "sweep.png").stat().st_size > 0

  counted.update(train=0, attack=0)
  again = sweep.run(config, str(workdir))
  assert counted["train"] == 0 and counted["attack"] == 0
  assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)


def test_sweep_over_generator_families(toy_main_job, tmp_path, counted):
  """A GAN and a DDPM point on the same people: each trained by its family's trainer, attacked
  against its own family's control, and the tables name the family."""
  main, data_dir, _ = toy_main_job
  config = sweep_tiny.get_config()
  config.data.data_dir = str(data_dir)
  config.face_encoder_workdir = str(main / "face_encoder")
  config.grid.update(families=("gan", "diffusion"), photos=(3,), overrepresented=0)
  # The gray-box score ranks no GAN's people, so it cannot come first.
  config.variants = ("denoising", "best")
  with pytest.raises(ValueError, match="'denoising' ranks every point's people, but gan gener"):
    sweep.run(config, str(tmp_path / "refused"))
  assert not (tmp_path / "refused").exists()
  config.variants = ("best", "denoising")
  workdir = tmp_path / "sweep"
  summary = sweep.run(config, str(workdir))
  assert [p["name"] for p in summary["points"]] == ["m3_p3_s2", "m3_p3_s2_diffusion"]
  assert [p["family"] for p in summary["points"]] == ["gan", "diffusion"]
  assert counted["train"] == 2  # The GAN control and target (the DDPMs: their own trainer).
  assert load_run(str(workdir / "points" / "m3_p3_s2_diffusion" / "diffusion")).kind == (
      "diffusion")
  assert load_run(str(workdir / "diffusion_control")).kind == "diffusion"
  for point in summary["points"]:
    scores = _rows(workdir / "points" / point["name"] / "attack" / "scores.csv")
    member = np.array([r["group"] == "member" for r in scores])
    best = np.array([float(r["score_best"]) for r in scores])
    assert point["metrics"]["best"]["auc"] == pytest.approx(_mann_whitney(best[member],
                                                                          best[~member]))
    if point["family"] == "diffusion":
      denoised = np.array([float(r["score_denoising"]) for r in scores])
      assert point["metrics"]["denoising"]["auc"] == pytest.approx(
          _mann_whitney(denoised[member], denoised[~member]))
    else:
      assert "score_denoising" not in scores[0]
      assert point["metrics"]["denoising"]["auc"] is None
    control = _rows(workdir / "control" / point["control_name"] / "scores.csv")
    best = np.array([float(r["score_best"]) for r in control])
    member = np.array([r["group"] == "member" for r in control])
    assert point["control"]["best"]["auc"] == pytest.approx(_mann_whitney(best[member],
                                                                          best[~member]))
  assert summary["points"][1]["control_name"] == "members_3_diffusion"
  table = (workdir / "sweep.md").read_text()
  assert "| family |" in table and "\n| diffusion | 3 |" in table
  gan_row = next(line for line in table.splitlines() if line.startswith("| gan |"))
  assert gan_row.split(" | ")[7:9] == ["-", "-"]  # No gray-box AUC for the GAN, nor its control.
  # A control of a family the grid does not hold is refused.
  config.grid.families = ("gan",)
  config.variants = ("best",)
  config.control_workdir = str(workdir / "diffusion_control")
  with pytest.raises(ValueError, match="holds a diffusion run; the grid's families are"):
    sweep.run(config, str(tmp_path / "other"))
