"""The attack, audit and filter jobs end to end on a tiny generator and encoder.

Both models train for a few steps on the same tiny synthetic split: the point is the plumbing
(checkpoints in, resumable streaming, report files out), not the attack's power, which
tests/test_identity_membership.py checks on embeddings with a known answer.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gmia.jobs import audit, membership, release_filter


def _config(models, defaults=membership.default_config):
  config = defaults()
  config.generator = f"gmia:{models[0]}"
  config.matcher.path = models[1]
  config.num_samples, config.chunk_size, config.topk = 48, 16, 3
  config.bootstrap_resamples = 50
  return config


def test_attack_writes_reports_and_resumes_identically(models, tmp_path):
  config = _config(models)
  first = membership.run(config, str(tmp_path / "a"))
  for name in ("report.json", "scores.csv", "samples.csv", "roc.png", "matches.png"):
    assert (tmp_path / "a" / name).exists(), name
  with open(tmp_path / "a" / "scores.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert len(rows) == 10 and {r["group"] for r in rows} == {"member", "population"}
  assert first["num_samples"] == first["usable_samples"] == 48
  assert first["metrics"]["best"]["num_positives"] == 6
  assert [e["rank"] for e in first["ranking"]] == list(range(1, 7))  # The 6 members, ranked.
  # A run stopped after its first chunk (num_samples covers one chunk; more samples extend the
  # same stream) resumes from there to exactly the uninterrupted result.
  config_one_chunk = _config(models)
  config_one_chunk.num_samples = 16
  membership.run(config_one_chunk, str(tmp_path / "b"))
  assert int(np.load(tmp_path / "b" / "state" / "evidence.npz")["samples_done"]) == 16
  resumed = membership.run(config, str(tmp_path / "b"))
  assert resumed["metrics"] == first["metrics"]
  assert (tmp_path / "b" / "samples.csv").read_text() == (tmp_path / "a" / "samples.csv").read_text()


def test_the_sample_command_draws_a_reported_nearest_sample_again(models, tmp_path):
  """The top person's nearest sample, as scores.csv names it, drawn by attack.sample: the very
  image the attack scored, bit for bit, and the same similarity to the person's photos."""
  config = _config(models)
  config.num_samples = 40  # A last chunk of 8: the command must draw in the attack's chunks.
  summary = membership.run(config, str(tmp_path / "attack"))
  with open(tmp_path / "attack" / "scores.csv") as handle:
    rows = {row["identity"]: row for row in csv.DictReader(handle)}
  top = rows[summary["ranking"][0]["name"]]
  nearest = int(top["best_sample"])
  other = 4 if nearest == 3 else 3
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-m", "attack.sample", f"--workdir={tmp_path / 'drawn'}",
                  f"--config.generator={config.generator}", f"--config.seed={config.seed}",
                  f"--config.indices={nearest},{other}", f"--config.chunk_size={summary['chunk_size']}"],
                 check=True, cwd=repo, capture_output=True)
  with np.load(tmp_path / "drawn" / "samples.npz") as drawn:
    assert drawn["indices"].tolist() == [nearest, other]
    image, other_image = drawn["images"]
  assert (tmp_path / "drawn" / f"sample_{nearest}.png").exists()
  job = membership.setup(config)
  ids, embeddings, images = job.samples.with_images(np.array([nearest]))
  assert ids.tolist() == [nearest]
  np.testing.assert_array_equal(image, images[0])
  refs = job.people.refs
  person = refs.names.tolist().index(top["identity"])
  similarity = np.max(refs.embeddings[refs.identity == person] @ embeddings[0])
  assert similarity == pytest.approx(float(top["score_best"]), abs=2e-6)
  # Another index is another face: the command does not hand back one image for every index.
  np.testing.assert_array_equal(other_image, job.samples.images(np.array([other]))[0])
  assert np.abs(other_image.astype(int) - image.astype(int)).max() > 10


def test_attack_refuses_results_of_other_inputs(models, tmp_path):
  first = membership.run(_config(models), str(tmp_path))
  other = _config(models)
  other.seed = 1
  with pytest.raises(ValueError, match="holds results of other inputs .seed: 0 there, 1 now"):
    membership.run(other, str(tmp_path))
  fewer = _config(models)
  fewer.num_samples = 32
  with pytest.raises(ValueError, match="num_samples=32 asks for fewer"):
    membership.run(fewer, str(tmp_path))
  other.overwrite = True
  assert membership.run(other, str(tmp_path))["metrics"] != first["metrics"]


def test_audit_of_a_member_and_the_filter(models, tmp_path):
  split = json.load(open(os.path.join(models[0], "split.json")))
  config = _config(models, audit.default_config)
  config.dataset_identity = split["groups"]["members"][0]
  result = audit.run(config, str(tmp_path / "audit"))
  assert 0 < result["p_value"] <= 1 and result["population_size"] == 4
  assert "people known not to be in its training set" in result["verdict"]
  config = _config(models, release_filter.default_config)
  config.threshold = 0.0  # Keep only samples unlike every training photo.
  result = release_filter.run(config, str(tmp_path / "filter"))
  kept = np.load(tmp_path / "filter" / "kept.npz")
  assert result["kept"] + result["dropped"] == 48 == result["num_samples"]
  assert len(kept["images"]) == result["kept"] and kept["images"].dtype == np.uint8


def test_missing_or_malformed_generator_is_named(tmp_path):
  config = membership.default_config()
  with pytest.raises(ValueError, match="config.generator is required: KIND:PATH"):
    membership.run(config, str(tmp_path))
  config.generator = "runs/demo/gan"
  with pytest.raises(ValueError, match="is not KIND:PATH"):
    membership.run(config, str(tmp_path))


def test_a_chunk_larger_than_the_run_generates_only_what_was_asked(models, tmp_path):
  config = _config(models)
  config.num_samples, config.chunk_size, config.topk = 5, 500, 2
  summary = membership.run(config, str(tmp_path))
  assert summary["num_samples"] == summary["usable_samples"] == 5
  with open(tmp_path / "samples.csv") as handle:
    assert [int(r["sample"]) for r in csv.DictReader(handle)] == [0, 1, 2, 3, 4]


def test_power_against_samples_equals_shorter_runs(models, tmp_path):
  """The AUCs at power_samples, read from one stream, are those of runs of that many samples;
  a count that is no multiple of the chunk size is refused before any sample is drawn."""
  config = _config(models)
  config.power_samples = (16, 32)
  summary = membership.run(config, str(tmp_path / "long"))
  assert [row["num_samples"] for row in summary["power"]] == [16, 32, 48]
  assert summary["power"][-1]["metrics"] == summary["metrics"]
  assert (tmp_path / "long" / "power.png").exists()
  for row in summary["power"][:2]:
    shorter = _config(models)
    shorter.num_samples = row["num_samples"]
    alone = membership.run(shorter, str(tmp_path / f"n{row['num_samples']}"))
    assert {v: alone["metrics"][v] for v in row["metrics"]} == row["metrics"]
  odd = _config(models)
  odd.power_samples = (20,)
  with pytest.raises(ValueError, match=r"power_samples must be positive multiples of the chunk "
                                       r"size 16 \(config.chunk_size\), got \[20\]"):
    membership.run(odd, str(tmp_path / "odd"))
  assert not (tmp_path / "odd" / "state").exists()
