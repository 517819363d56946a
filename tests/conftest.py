"""Fixtures shared by test modules: tiny trained models on one tiny synthetic split."""

import pytest

from gmia.encoder import trainer as encoder_trainer
from gmia.gan import trainer as gan_trainer
from train.configs import arcface_tiny, gan_tiny


@pytest.fixture(scope="session")
def models(tmp_path_factory):
  """(generator workdir, encoder workdir): a few steps of training each, same split."""
  root = tmp_path_factory.mktemp("models")
  gan = gan_tiny.get_config()
  gan.data.data_dir = str(root / "data")
  gan.total_steps, gan.save_every, gan.log_every = 2, 2, 1
  gan_trainer.train_and_evaluate(gan, str(root / "gan"))
  encoder = arcface_tiny.get_config()
  encoder.data = gan.data
  encoder.data.split.path = str(root / "gan" / "split.json")
  encoder.eval_identities = 2
  encoder_trainer.train_and_evaluate(encoder, str(root / "encoder"))
  return str(root / "gan"), str(root / "encoder")
