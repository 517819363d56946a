"""Diffusion models as targets of the attacks: a gmia DDPM workdir and a diffusers folder as
generator sources, the attack's gray-box score recomputed from the denoiser, the quality of the
samples (Frechet distance, near-copies), and the near-copy criterion against brute force."""

import csv
import dataclasses
import os
import shutil

import ml_collections
import numpy as np
import pytest

from gmia import parallel
from gmia.attacks import copies, denoising
from gmia.attacks.samples import draw
from gmia.diffusion import trainer
from gmia.jobs import membership
from gmia.sources import DENOISER, config_fields, open_source
from train.configs import diffusion_tiny

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers")


@pytest.fixture(scope="module")
def diffusion_run(models, tmp_path_factory):
  """A DDPM trained 2 steps on the members of the shared tiny split (tests/conftest.py)."""
  config = diffusion_tiny.get_config()
  config.data.data_dir = os.path.join(os.path.dirname(models[0]), "data")
  config.update(num_steps=2, checkpoint_every=2, log_every=1)
  workdir = str(tmp_path_factory.mktemp("ddpm"))
  trainer.train_and_evaluate(config, workdir)
  return workdir


def _source_config(generator, **fields):
  config = ml_collections.ConfigDict(config_fields())
  config.update({"generator": generator, "diffusion_steps": 3, **fields})
  return config


def test_a_diffusion_workdir_is_a_source_drawn_by_index(diffusion_run):
  source = open_source(_source_config(f"gmia:{diffusion_run}"))
  assert DENOISER in source.supports and source.resolution == 32
  assert source.train_group == "members" and source.split_path.endswith("split.json")
  mesh = parallel.make_mesh()
  batch = draw(source, np.arange(4), mesh, 4)
  assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8
  # Sample 2 drawn alone, in a chunk of the same size, is the same image bit for bit.
  np.testing.assert_array_equal(draw(source, np.array([2]), mesh, 4)[0], batch[2])
  other_seed = open_source(_source_config(f"gmia:{diffusion_run}", seed=1))
  assert np.abs(draw(other_seed, np.arange(4), mesh, 4).astype(int) - batch).max() > 10


def test_the_attack_on_a_ddpm_adds_the_gray_box_score_and_sample_quality(models, diffusion_run,
                                                                          tmp_path, monkeypatch):
  drawn, embedded = [], []  # The sample indices drawn with their images, and without.
  make = membership.make_sample_embedder

  def counting(*args):
    samples = make(*args)
    def with_images(indices):
      drawn.extend(np.asarray(indices).tolist())
      return samples.with_images(indices)
    def embed(indices):
      embedded.extend(np.asarray(indices).tolist())
      return samples.embed(indices)
    return dataclasses.replace(samples, with_images=with_images, embed=embed)

  monkeypatch.setattr(membership, "make_sample_embedder", counting)
  config = membership.default_config()
  config.generator = f"gmia:{diffusion_run}"
  config.matcher.path = models[1]
  config.update(num_samples=32, chunk_size=16, topk=3, bootstrap_resamples=20,
                diffusion_steps=3, quality_samples=16, denoising_timesteps=(50, 300))
  summary = membership.run(config, str(tmp_path))
  # The quality block's samples are those the stream kept: each drawn once, in a rerun never.
  assert drawn == list(range(16)) and embedded == list(range(16, 32))
  assert membership.run(config, str(tmp_path))["sample_quality"] == summary["sample_quality"]
  assert drawn == list(range(16))
  # A state that kept none (one written before the attack kept them) draws them again, the same.
  shutil.rmtree(tmp_path / "state" / "first")
  again = membership.run(config, str(tmp_path))
  assert drawn == list(range(16)) * 2
  for key in ("sample_quality", "density_bandwidth", "metrics"):
    assert again[key] == summary[key], key
  assert "denoising" in summary["metrics"]
  with open(tmp_path / "scores.csv") as handle:
    rows = list(csv.DictReader(handle))
  # The gray-box score recomputed from the denoiser on the photos the attack scored.
  job = membership.setup(config)
  unet, variables, schedule = job.source.denoiser
  refs = job.people.refs
  crops = job.people.crops.astype(np.float32) / 127.5 - 1.0  # 32 px crops: the model's size.
  errors = denoising.denoising_errors(unet, variables, schedule, crops, refs.photo_id, (50, 300),
                                      seed=config.seed)
  expected = denoising.person_scores(errors, refs.identity, refs.num_identities)
  got = np.array([float(row["score_denoising"]) for row in rows])
  assert [row["identity"] for row in rows] == refs.names.tolist()
  np.testing.assert_allclose(got, expected, atol=2e-6)
  quality = summary["sample_quality"]
  assert quality["samples"] == 16 and quality["training_photos"] == 6 * 4
  assert quality["frechet_distance"] > 0 and 0 <= quality["near_copies"] <= 16


def test_a_diffusers_folder_is_a_source():
  path = os.path.join(FIXTURES, "attn")
  source = open_source(_source_config(f"diffusers:{path}", diffusion_steps=2))
  assert source.kind == "diffusers" and DENOISER in source.supports and source.resolution == 16
  assert len(source.fingerprint["sha256"]) == 16 and source.split_path is None
  images = np.asarray(source.sample(np.arange(2), parallel.make_mesh()))
  assert images.shape == (2, 16, 16, 3) and np.all(np.abs(images) <= 1)
  pipeline = open_source(_source_config(f"diffusers:{os.path.join(FIXTURES, 'legacy_pipeline')}",
                                        diffusion_steps=2))
  assert pipeline.resolution == 16
  with pytest.raises(ValueError, match="KIND:PATH"):
    open_source(_source_config(f"diffuser:{path}"))


def test_near_copies_against_brute_force():
  rng = np.random.default_rng(0)
  photos = rng.integers(0, 256, (20, 8, 8, 3)).astype(np.uint8)
  near = np.clip(photos[:5].astype(int) + rng.integers(-2, 3, (5, 8, 8, 3)), 0, 255)
  samples = np.concatenate([near, rng.integers(0, 256, (5, 8, 8, 3))]).astype(np.uint8)
  ratios, nearest = copies.copy_ratios(samples, photos, neighbours=10)
  flat = lambda x: x.reshape(len(x), -1).astype(np.float64) / 127.5 - 1.0
  distances = np.sqrt(((flat(samples)[:, None] - flat(photos)[None]) ** 2).sum(-1))
  ordered = np.sort(distances, axis=1)[:, :10]
  # The kernel's float32 |a|^2 + |b|^2 - 2 a.b loses digits on a near-copy's short distance
  # (2e-4 relative here, on a ratio compared with 1/3).
  np.testing.assert_allclose(ratios, ordered[:, 0] / ordered.mean(axis=1), rtol=1e-3)
  np.testing.assert_array_equal(nearest[:5], np.arange(5))
  assert copies.count_copies(ratios) == 5
  with pytest.raises(ValueError, match="images of one shape"):
    copies.copy_ratios(samples, photos[:, :4])
