"""Generator sources: sample i is a pure function of (seed, i) for every kind; images from a
folder, an .npz and a .tar agree; fingerprints follow content; bad sources are named."""

import hashlib
import json
import os
import tarfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gmia import parallel, sources, viz
from gmia.checkpoint import Checkpointer
from gmia.gan import train_step
from gmia.models import import_stylegan2
from train.configs import gan_tiny

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "stylegan2")
MESH = parallel.make_mesh()


def config(generator, **fields):
  return ml_collections.ConfigDict({**sources.config_fields(), "generator": generator, **fields})


def test_a_pickle_samples_z_i_of_its_own_seed_and_index():
  path = os.path.join(FIXTURES, "uncond64.pkl")
  source = sources.open_source(config(f"stylegan2_pkl:{path}", seed=3, truncation_psi=0.7))
  assert source.resolution == 64 and source.supports == {"latents", "gradients", "stylegan"}
  generator, g_vars, _ = import_stylegan2.load_generator(path)
  z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(jax.random.key(3), i),
                                           (generator.z_dim,)))(jnp.arange(5))
  want = np.clip(np.asarray(generator.apply(g_vars, z, 0.7, None, "const")), -1, 1)
  np.testing.assert_allclose(np.asarray(source.sample(np.arange(5), MESH)), want, atol=1e-5)
  # Any subset, in any order: the same samples.
  np.testing.assert_allclose(np.asarray(source.sample(np.array([4, 1]), MESH)), want[[4, 1]],
                             atol=1e-5)
  other = sources.open_source(config(f"stylegan2_pkl:{path}", seed=4, truncation_psi=0.7))
  assert np.abs(np.asarray(other.sample(np.arange(2), MESH)) - want[:2]).mean() > 1e-3
  assert other.fingerprint["sha256"] == source.fingerprint["sha256"]
  with pytest.raises(ValueError, match="conditional generator .* set config.class_idx"):
    sources.open_source(config(f"stylegan2_pkl:{os.path.join(FIXTURES, 'cond32.pkl')}"))


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)


def test_images_from_a_folder_an_npz_and_a_tar_agree(images, tmp_path):
  folder = tmp_path / "folder"
  folder.mkdir()
  for i, image in enumerate(images):
    viz.save_png(str(folder / f"{i:03d}.png"), image)
  np.savez(tmp_path / "samples.npz", images=images)
  np.savez_compressed(tmp_path / "compressed.npz", images=images, other=images[:1])
  for name, mode in (("samples.tar", "w"), ("samples.tar.gz", "w:gz")):
    with tarfile.open(tmp_path / name, mode) as archive:
      for i in range(len(images)):
        archive.add(folder / f"{i:03d}.png", arcname=f"samples/{i:03d}.png")
      archive.addfile(tarfile.TarInfo("samples/README.txt"))  # Not an image: ignored.
  # Archives are read an image at a time: backwards, forwards and again.
  order = np.array([5, 0, 2, 2, 4])
  want = images[order].astype(np.float32) / 127.5 - 1
  paths = [folder] + [tmp_path / name for name in ("samples.npz", "compressed.npz",
                                                   "samples.tar", "samples.tar.gz")]
  digests = set()
  for path in paths:
    source = sources.open_source(config(f"images:{path}"))
    assert source.num_available == 6 and source.supports == frozenset()
    np.testing.assert_allclose(np.asarray(source.sample(order, MESH)), want, atol=1e-6)
    with pytest.raises(ValueError, match="holds 6 images; sample 6 asked"):
      source.sample(np.array([6]), MESH)
    digests.add((path.suffix == ".npz", source.fingerprint["sha256"]))
  # The fingerprint is the images' bytes (an .npz's array), however they are stored.
  assert len(digests) == 3 and (True, hashlib.sha256(images.tobytes()).hexdigest()[:16]) in digests
  # The fingerprint follows the bytes: one changed pixel is another source.
  before = sources.open_source(config(f"images:{folder}")).fingerprint
  changed = images[3].copy()
  changed[0, 0, 0] ^= 1
  viz.save_png(str(folder / "003.png"), changed)
  assert sources.open_source(config(f"images:{folder}")).fingerprint != before
  viz.save_png(str(folder / "004.png"), np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="004.png: every image of a source must be"):
    sources.open_source(config(f"images:{folder}")).sample(np.arange(6), MESH)


def tiny_onnx_generator(path, last="Tanh"):
  """z f32[N, 4] -> Gemm -> Reshape [N, 2, 2, 3] -> `last`: an NHWC 2x2 RGB 'generator'."""
  weight = np.random.default_rng(1).normal(size=(4, 12)).astype(np.float32)
  nodes = [helper.make_node("Gemm", ["z", "w"], ["flat"]),
           helper.make_node("Reshape", ["flat", "shape"], ["hwc"]),
           helper.make_node(last, ["hwc"], ["image"])]
  graph = helper.make_graph(
      nodes, "tiny", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
      [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, 2, 3])],
      [numpy_helper.from_array(weight, "w"),
       numpy_helper.from_array(np.array([-1, 2, 2, 3], np.int64), "shape")])
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
  return weight


def test_an_onnx_generator_reads_its_latents_and_range_from_the_graph(tmp_path):
  path = str(tmp_path / "g.onnx")
  weight = tiny_onnx_generator(path)
  source = sources.open_source(config(f"onnx:{path}", seed=2))
  assert source.resolution == 2 and source.supports == {"latents", "gradients"}
  z = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(2), i), (4,)))
                for i in range(3)])
  want = np.tanh(z @ weight).reshape(3, 2, 2, 3)
  np.testing.assert_allclose(np.asarray(source.sample(np.arange(3), MESH)), want, atol=1e-5)
  tiny_onnx_generator(path, last="Identity")
  with pytest.raises(ValueError, match="comes from Identity, which does not say its range"):
    sources.open_source(config(f"onnx:{path}"))
  ranged = sources.open_source(config(f"onnx:{path}", seed=2, generator_range="0,255"))
  np.testing.assert_allclose(np.asarray(ranged.sample(np.arange(3), MESH)),
                             np.clip((z @ weight).reshape(3, 2, 2, 3) / 127.5 - 1, -1, 1),
                             atol=1e-5)
  with pytest.raises(ValueError, match="generator_range must be"):
    sources.open_source(config(f"onnx:{path}", generator_range="wide"))


@pytest.mark.parametrize("spec,message", [
    ("", "config.generator is required"), ("runs/gan", "is not KIND:PATH"),
    ("gan:runs/x", "is not KIND:PATH"), ("images:", "is not KIND:PATH"),
    ("images:/nowhere.zip", "neither a folder nor an .npz or .tar"),
])
def test_malformed_sources_are_named(spec, message):
  with pytest.raises(ValueError, match=message):
    sources.open_source(config(spec))


def test_a_generator_with_non_finite_parameters_is_refused(tmp_path):
  gan_config = gan_tiny.get_config()
  models = train_step.build_models(gan_config)
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                       jax.eval_shape(lambda: train_step.init_state(gan_config, models)))
  state["g_ema"]["mapping"]["fc0"]["bias"][3] = np.nan  # A diverged run's EMA weights.
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, state, {"kind": "gan", "config": json.loads(gan_config.to_json())})
  checkpointer.close()
  with pytest.raises(ValueError, match="gmia:.* holds non-finite values .*fc0.*bias"):
    sources.open_source(config(f"gmia:{tmp_path}"))
