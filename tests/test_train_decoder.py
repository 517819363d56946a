"""The decoder trainer end to end on a tiny encoder: both methods, resume, decode API, errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia import metrics, training
from gmia.data import run_data
from gmia.face_encoder import trainer as encoder_trainer
from gmia.inversion import decoder_training, decoding, networks
from gmia.models import decoders
from tests.resume_check import check_resume
from train.configs import face_encoder_tiny


@pytest.fixture(scope="module")
def encoder_workdir(tmp_path_factory):
  config = face_encoder_tiny.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("encoder"))
  encoder_trainer.train_and_evaluate(config, workdir)
  return workdir, config.data


def tiny_config(encoder, method):
  workdir, data = encoder
  config = decoder_training.default_config()
  config.network.path = workdir
  config.data = data
  config.method = method
  config.layers = ("stem", "stage1")
  config.num_eval = 16
  config.decoder.width = 8
  config.batch_size = 16
  config.log_every = 10
  config.checkpoint_every = 20
  config.aux.update(num_steps=60, learning_rate=3e-3)
  config.synthesis.update(num_images=8, batch_size=8, num_steps=5)
  config.blocks.update(num_steps=20, learning_rate=1e-2)
  config.chain.update(num_steps=20, learning_rate=3e-3)
  return config


def victims(encoder, config):
  """The photos and stem features the trainer measures its decoders on."""
  arrays = run_data.load_dataset(config.data)
  network = networks.load_network(config.network)
  images = decoder_training.eval_images(arrays, run_data.split_for(config.data, arrays), config,
                                        network.image_size)
  acts = jax.jit(lambda v, x: network.model.apply(v, x, capture=("stem", "stage1")))(
      network.variables, images)
  return network, images, acts


@pytest.fixture(scope="module")
def aux_run(encoder_workdir, tmp_path_factory):
  config = tiny_config(encoder_workdir, "aux")
  workdir = str(tmp_path_factory.mktemp("aux"))
  return config, workdir, decoder_training.train_and_evaluate(config, workdir).metrics


def test_aux_decoders_learn_and_decode_api_reproduces_their_scores(encoder_workdir, aux_run):
  config, workdir, summary = aux_run
  network, images, acts = victims(encoder_workdir, config)
  decoder, variables, meta = decoding.load_decoder(workdir, "stem")
  assert meta["layers"] == ["stem", "stage1"] and meta["image_size"] == images.shape[1]
  decoded = decoding.decode(decoder, variables, acts["stem"])
  assert decoded.shape == images.shape
  psnr = float(jnp.mean(metrics.psnr(decoded, images)))
  np.testing.assert_allclose(psnr, summary["stem/psnr"], rtol=1e-5)
  with open(os.path.join(workdir, training.EVAL_FILE)) as handle:
    assert json.load(handle)["stem/psnr"] == pytest.approx(psnr)
  # A fresh decoder of the same layer, against which training must show.
  fresh = decoders.make_decoders(decoders.decoder_specs(network, ["stem"]), config.decoder)["stem"]
  start = jax.jit(fresh.init)(jax.random.key(0), acts["stem"])
  start_psnr = float(jnp.mean(metrics.psnr(jax.jit(fresh.apply)(start, acts["stem"]), images)))
  for layer in config.layers:
    assert summary[f"{layer}/psnr"] > start_psnr + 5, (layer, summary, start_psnr)
    assert summary[f"{layer}/psnr"] > summary["constant/psnr"] + 2, summary
  assert os.path.exists(os.path.join(workdir, decoder_training.GRID_FILE))

  with pytest.raises(ValueError, match="reads features"):
    decoding.decode(decoder, variables, acts["stage1"])
  with pytest.raises(ValueError, match="NaN"):
    decoding.decode(decoder, variables, acts["stem"].at[0, 0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="name one"):
    decoding.load_decoder(workdir)
  with pytest.raises(ValueError, match="no decoder of layer"):
    decoding.load_decoder(workdir, "stage3")


@pytest.fixture(scope="module")
def zero_shot_run(encoder_workdir, tmp_path_factory):
  config = tiny_config(encoder_workdir, "zero_shot")
  workdir = str(tmp_path_factory.mktemp("zero_shot"))
  return config, workdir, decoder_training.train_and_evaluate(config, workdir).metrics


def test_zero_shot_decoder_beats_the_mean_image_on_unseen_faces(zero_shot_run):
  _, _, summary = zero_shot_run
  # The best constant image (the victims' own mean) is an oracle no decoder is given.
  assert summary["stem/psnr"] > summary["constant/psnr"] + 2, summary
  assert summary["stem/ssim"] > summary["constant/ssim"] + 0.1, summary


def test_resume_across_the_phase_boundary_runs_only_the_chain(zero_shot_run, tmp_path):
  # Killed after the blocks phase (steps 20 of 40): the chain phase begins on resume, and the
  # synthesised pool comes from the checkpoint.
  config, workdir, _ = zero_shot_run
  check_resume(decoder_training.train_and_evaluate, config, workdir, str(tmp_path / "resumed"))
  changed = config.copy_and_resolve_references()
  changed.chain.cycle_weight = 0.5
  with pytest.raises(ValueError, match="another config: chain.cycle_weight"):
    decoder_training.train_and_evaluate(changed, str(tmp_path / "resumed"))


def test_bad_configs_are_named(encoder_workdir, tmp_path):
  def fails(match, error=ValueError, **changes):
    config = tiny_config(encoder_workdir, "aux")
    for key, value in changes.items():
      node = config
      *parents, leaf = key.split(".")
      for parent in parents:
        node = node[parent]
      node[leaf] = value
    with pytest.raises(error, match=match):
      decoder_training.train_and_evaluate(config, str(tmp_path / "run"))

  fails("unknown method", method="gan")
  fails("unknown layer", layers=("stem", "stage9"))
  fails("config.network.path is required", **{"network.path": ""})
  fails("nowhere' does not exist", **{"network.path": str(tmp_path / "nowhere")})
  (tmp_path / "empty").mkdir()
  fails("no checkpoints in", FileNotFoundError, **{"network.path": str(tmp_path / "empty")})
  fails("unknown config.network.kind 'detector'", **{"network.kind": "detector"})
  fails("other people than the victims", aux_group="non_members")
  fails("noise_fraction", method="zero_shot", **{"synthesis.noise_fraction": 1.5})
  assert not os.path.exists(tmp_path / "nowhere")
