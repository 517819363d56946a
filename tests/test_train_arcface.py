"""The ArcFace trainer end to end on a tiny config: data roles, training, resume, evaluation."""

import json
import os
import shutil

import numpy as np
import pytest

from gmia.data.arrays import FaceArrays
from gmia.data.split import make_split
from gmia.encoder import trainer
from tests.multidevice import run_with_devices
from train.configs import arcface_tiny


def test_encoder_sets_use_only_encoder_identities_and_hold_some_out():
  n_ids, photos = 40, 4
  identity = np.repeat(np.arange(n_ids), photos)
  arrays = FaceArrays(np.zeros((n_ids * photos, 4, 4, 3), np.uint8), identity,
                      np.arange(n_ids * photos))
  split = make_split(arrays, seed=0, members=5, non_members=5, shadow=5, reference_photos=2)
  train_set, eval_set = trainer.encoder_sets(arrays, split, eval_identities=6, seed=0)
  encoder = set(split.identities("encoder").tolist())
  train_ids, eval_ids = set(train_set.identity.tolist()), set(eval_set.identity.tolist())
  assert len(eval_ids) == 6 and train_ids | eval_ids == encoder and not train_ids & eval_ids
  assert len(train_set) + len(eval_set) == len(encoder) * photos
  with pytest.raises(ValueError, match="eval_identities"):
    trainer.encoder_sets(arrays, split, eval_identities=len(encoder), seed=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  config = arcface_tiny.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("run"))
  metrics = trainer.train_and_evaluate(config, workdir)
  return config, workdir, metrics


def test_training_writes_metrics_and_checkpoints(finished_run):
  config, workdir, metrics = finished_run
  with open(os.path.join(workdir, trainer.EVAL_FILE)) as handle:
    saved = json.load(handle)
  assert set(saved) >= {"verification_auc", "tar_at_far_0.01", "identification_1nn",
                        "pixel_identification_1nn"}
  assert 0 <= metrics["verification_auc"] <= 1 and 0 <= metrics["identification_1nn"] <= 1
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_resume_reproduces_uninterrupted_run(finished_run, tmp_path):
  config, workdir, _ = finished_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))  # As if killed after step 2.
  trainer.train_and_evaluate(config, resumed)
  model, expected = trainer.load_encoder(workdir)
  _, got = trainer.load_encoder(resumed)
  assert model.width == config.model.width
  for a, b in zip(jax_leaves(expected), jax_leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  changed = config.copy_and_resolve_references()
  changed.model.width = 8
  with pytest.raises(ValueError, match="model"):
    trainer.train_and_evaluate(changed, resumed)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_eight_devices_train_like_one(finished_run, tmp_path):
  # Batch split over 8 devices, class centres split by rows: the same steps as on one device.
  config, workdir, _ = finished_run
  sharded = str(tmp_path / "sharded")
  result = run_with_devices(8, f"""
import jax
from gmia.encoder import trainer
from tests.multidevice import run_with_devices
from train.configs import arcface_tiny
config = arcface_tiny.get_config()
config.data.data_dir = {config.data.data_dir!r}
trainer.train_and_evaluate(config, {sharded!r})
RESULT = {{"num_centres": trainer.Checkpointer({sharded!r}).restore_meta()["num_centres"]}}
""")
  assert int(result["num_centres"]) == 24  # 17 classes padded to 3 rows per device.
  _, expected = trainer.load_encoder(workdir)
  _, got = trainer.load_encoder(sharded)  # Restores an 8-device checkpoint on one device.
  for a, b in zip(jax_leaves(expected), jax_leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
