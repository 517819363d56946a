"""The classifier trainer end to end on a tiny config: held-out photos, learning, exact resume."""

import json
import os

import numpy as np
import pytest

from gmia import training
from gmia.classifier import trainer
from gmia.data import run_data
from gmia.data.arrays import FaceArrays
from gmia.data.split import make_split
from gmia.runs import load_run
from tests.resume_check import check_resume
from train.configs import classifier_tiny


def test_classifier_sets_hold_out_photos_of_every_encoder_identity():
  n_ids, photos = 12, 5
  identity = np.repeat(np.arange(n_ids), photos)
  arrays = FaceArrays(np.zeros((n_ids * photos, 4, 4, 3), np.uint8), identity,
                      np.arange(n_ids * photos))
  split = make_split(arrays, seed=0, members=2, non_members=2, shadow=2, reference_photos=2)
  train_set, eval_set, classes = trainer.classifier_sets(arrays, split, eval_photos=2, seed=0)
  encoder = split.identities("encoder")
  np.testing.assert_array_equal(classes, encoder)
  np.testing.assert_array_equal(np.unique(eval_set.identity, return_counts=True)[1], 2)
  np.testing.assert_array_equal(np.unique(train_set.identity, return_counts=True)[1], 3)
  assert not set(train_set.photo_id.tolist()) & set(eval_set.photo_id.tolist())
  assert set(train_set.identity.tolist()) == set(encoder.tolist())
  with pytest.raises(ValueError, match="eval_photos"):
    trainer.classifier_sets(arrays, split, eval_photos=photos, seed=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  config = classifier_tiny.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("run"))
  return config, workdir, trainer.train_and_evaluate(config, workdir).metrics


def test_training_learns_the_identities(finished_run):
  """Measured on CPU: 72% of the 40 held-out photos of 10 identities after 100 steps."""
  config, workdir, metrics = finished_run
  with open(os.path.join(workdir, training.EVAL_FILE)) as handle:
    assert json.load(handle) == metrics
  assert metrics["chance"] == 0.1
  assert metrics["accuracy"] > 4 * metrics["chance"], metrics
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "50"]
  # The loaded classifier reproduces the reported accuracy.
  run = load_run(workdir, "classifier")
  model, variables = run.model, run.variables
  arrays, split = run_data.load_for_run(config.data, workdir)
  _, eval_set, classes = trainer.classifier_sets(arrays, split, config.eval_photos, config.seed)
  images = (eval_set.images.astype(np.float32) - 127.5) / 127.5
  predicted = np.argmax(model.apply(variables, images), axis=-1)
  assert np.mean(classes[predicted] == eval_set.identity) == metrics["accuracy"]


def test_resume_runs_only_the_remaining_steps(finished_run, tmp_path):
  config, workdir, _ = finished_run
  check_resume(trainer.train_and_evaluate, config, workdir, str(tmp_path / "resumed"))
  changed = config.copy_and_resolve_references()
  changed.model.widths = (8, 8, 8)
  with pytest.raises(ValueError, match="another config: model.widths"):
    trainer.train_and_evaluate(changed, str(tmp_path / "resumed"))
