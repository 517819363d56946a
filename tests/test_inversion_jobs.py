"""The reconstruction (GAN-Leaks) and feature inversion jobs end to end on tiny trained models.

The scores and inverters themselves are checked against references in test_reconstruction.py and
test_inversion_features.py; here: the files each job writes, their consistency with each other,
and the self-calibration identity (a generator calibrated against itself scores exactly zero).
"""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from gmia.jobs import feature_inversion, reconstruction
from gmia.runs import load_run
from tests import assets


def test_reconstruction_job_reports_and_calibrates_against_itself(models, tmp_path):
  gan_workdir, _ = models
  config = reconstruction.default_config()
  config.generator = config.reference_generator = f"gmia:{gan_workdir}"
  config.num_targets, config.num_samples, config.batch_size = 3, 20, 4
  config.projection.update(num_steps=4, w_avg_samples=64)
  summary = reconstruction.run(config, str(tmp_path))
  attacks = summary["attacks"]
  assert set(attacks) == {"black_box", "white_box", "black_box_calibrated",
                          "white_box_calibrated"}
  with open(tmp_path / "scores.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert len(rows) == 6 and sum(int(r["member"]) for r in rows) == 3
  for attack in ("black_box", "white_box"):
    scores = np.array([float(r[attack]) for r in rows])
    assert np.all(scores < 0) and np.all(np.isfinite(scores)), attack  # Minus a distance.
    # Same generator, same seed: the reference distance is the distance itself.
    np.testing.assert_array_equal([float(r[f"{attack}_calibrated"]) for r in rows], 0.0)
    assert attacks[f"{attack}_calibrated"]["auc"] == 0.5
  assert json.load(open(tmp_path / "report.json"))["attacks"] == attacks
  resolution = load_run(gan_workdir, "gan").input_size
  width, height = Image.open(tmp_path / "reconstructions.png").size
  assert width >= 3 * resolution and height >= 3 * resolution  # Three target rows.
  assert (tmp_path / "roc.png").exists()


def test_feature_inversion_job_table_matches_report(models, tmp_path):
  gan_workdir, encoder_workdir = models
  config = feature_inversion.default_config()
  config.network.path = encoder_workdir
  config.judge.update(path=assets.sface_path(), preset="sface")  # Not the encoder itself.
  config.data = load_run(gan_workdir, "gan").config.data
  config.data.split.path = os.path.join(gan_workdir, "split.json")
  config.layers, config.num_victims = ("stem", "stage2"), 3
  config.methods = ("optimisation", "generator_prior")
  config.generator = f"gmia:{gan_workdir}"
  config.inversion.update(num_steps=60, w_avg_samples=64)
  summary = feature_inversion.run(config, str(tmp_path))
  results = summary["results"]
  assert summary["num_victims"] == 3 and list(results) == ["stem", "stage2"]
  for layer, by_method in results.items():
    assert list(by_method) == ["optimisation", "generator_prior"]
    for method, result in by_method.items():
      per_victim = result["per_victim"]
      assert all(len(v) == 3 for v in per_victim.values())
      for name in ("psnr", "ssim", "identity_cosine"):
        assert result[name] == pytest.approx(np.mean(per_victim[name]), rel=1e-6), (layer, name)
  # The stem is one conv, BN and PReLU away from the pixels: far easier to invert than stage 2
  # (inversion quality itself is measured in test_inversion_features.py).
  stem, deep = results["stem"]["optimisation"], results["stage2"]["optimisation"]
  assert stem["psnr"] > deep["psnr"] + 2 and stem["identity_cosine"] > deep["identity_cosine"]
  table = (tmp_path / "table.md").read_text().splitlines()
  assert len(table) == 2 + 4 and table[2].startswith("| stem | optimisation | ")
  assert f"{stem['psnr']:.2f}" in table[2]
  assert json.load(open(tmp_path / "report.json"))["results"] == results
  width, height = Image.open(tmp_path / "inversions.png").size
  assert width >= 5 * 32 and height >= 3 * 32  # Victims in rows: original, then 4 inversions.


def test_jobs_name_missing_models(tmp_path):
  with pytest.raises(ValueError, match="config.generator is required"):
    reconstruction.run(reconstruction.default_config(), str(tmp_path))
  config = feature_inversion.default_config()
  with pytest.raises(ValueError, match="config.network.path is required"):
    feature_inversion.run(config, str(tmp_path))
  config.network.path = str(tmp_path)
  config.methods = ("optimisation", "zero_shot_decoder")
  with pytest.raises(ValueError, match="needs config.zero_shot_decoder_workdir"):
    feature_inversion.run(config, str(tmp_path))
  config.methods = ("magic",)
  with pytest.raises(ValueError, match="unknown or no methods"):
    feature_inversion.run(config, str(tmp_path))
