"""Imported ONNX networks as split networks (gmia.models.onnx_split), against onnxruntime and
against gmia's own IResNet.

SFace (tests/assets.py) is cut at split points: the device half must give the graph's own tensors
as onnxruntime computes them (channels last), and the server half fed with them the whole
network's output. gmia's insightface-layout export of a flax IResNet (residual blocks, BNs kept)
must split as the flax IResNet does and invert exactly as it does, batch-norm prior included,
since the graph's BNs run as flax BatchNorms holding the file's statistics.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from onnx import helper

pytest.importorskip("onnxruntime")

from gmia.faces.matchers import Preprocessing  # noqa: E402
from gmia.inversion import features, priors  # noqa: E402
from gmia.models import onnx_split, stylegan  # noqa: E402
from tests import assets  # noqa: E402
from tests.iresnet_onnx_export import MODEL, SIZE, export_onnx, random_variables  # noqa: E402

ARCFACE = Preprocessing(0, mean=127.5, std=127.5)  # gmia's exports, at their own input size.

SFACE_CUTS = ("conv_2_dw_relu", "conv_7_relu")  # 112x112x32 and 14x14x512.


@functools.cache
def iresnet_file(folder: str, fold_bn: bool) -> str:
  path = f"{folder}/iresnet_{'folded' if fold_bn else 'bn'}.onnx"
  onnx.save(export_onnx(MODEL, random_variables(MODEL), fold_bn=fold_bn), path)
  return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("onnx_split"))
  return {"sface": assets.sface_path(), "iresnet": iresnet_file(folder, True),
          "iresnet_bn": iresnet_file(folder, False), "folder": folder}


def with_outputs(path: str, tensors, folder: str) -> str:
  """A copy of the model that also outputs `tensors`, for onnxruntime."""
  model = onnx.load(path)
  model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                            for name in tensors)
  copy = f"{folder}/{len(tensors)}_{path.rsplit('/', 1)[-1]}"
  onnx.save(model, copy)
  return copy


def close(got, expected):
  """Largest error relative to the reference's scale."""
  return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def sface(files):
  return onnx_split.import_split_network(files["sface"], preprocessing="sface")


def test_halves_equal_the_whole_and_onnxruntime(files, sface):
  network = sface
  images = np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
  whole, device = jax.jit(lambda v, x: (network.model.apply(v, x), network.model.apply(
      v, x, capture=SFACE_CUTS)))(network.variables, images)
  servers = jax.jit(lambda v, f: [network.model.apply(v, f[cut], start=cut)
                                  for cut in SFACE_CUTS])(network.variables, device)
  session = assets.onnxruntime_session(with_outputs(files["sface"], SFACE_CUTS, files["folder"]))
  pixels = np.transpose(127.5 * (images + 1), (0, 3, 1, 2))  # SFace reads RGB 0..255, NCHW.
  expected = [session.run(None, {"data": pixels[i:i + 1]}) for i in range(len(images))]
  assert close(whole, np.concatenate([e[0] for e in expected])) < 1e-4
  for k, (cut, server) in enumerate(zip(SFACE_CUTS, servers)):
    reference = np.transpose(np.concatenate([e[1 + k] for e in expected]), (0, 2, 3, 1))
    assert device[cut].shape == reference.shape and close(device[cut], reference) < 1e-4, cut
    np.testing.assert_allclose(server, whole, atol=1e-5, err_msg=cut)


def test_the_batch_norms_are_the_files(files, sface):
  network = sface
  proto = onnx.load(files["sface"])
  nodes = [node for node in proto.graph.node if node.op_type == "BatchNormalization"]
  assert [bn.node for bn in network.model.graph.batch_norms] == [node.name for node in nodes]
  stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
  first = network.model.graph.batch_norms[0]
  np.testing.assert_array_equal(network.variables["batch_stats"][first.key]["var"],
                                stored[first.var])
  # The device half up to conv_7_relu runs the BNs of convs 1 to 7 (one, then two per block).
  assert features.batch_norms_before(network.model, network.variables, 112, "conv_7_relu") == 13
  # The prior sees the first BN's input as the graph computes it (onnxruntime's conv output).
  images = np.random.default_rng(1).uniform(-1, 1, (1, 112, 112, 3)).astype(np.float32)
  _, moments = priors.batch_norm_statistics(network.model, network.variables, images,
                                            capture=("conv_1_relu",))
  (mean, var, run_mean, run_var), = moments
  session = assets.onnxruntime_session(with_outputs(files["sface"], [first.x], files["folder"]))
  conv = session.run(None, {"data": np.transpose(127.5 * (images + 1), (0, 3, 1, 2))})[1]
  assert close(mean, conv.mean(axis=(0, 2, 3))) < 1e-4
  assert close(var, conv.var(axis=(0, 2, 3))) < 1e-4
  np.testing.assert_array_equal(run_mean, stored[first.mean])


def test_an_imported_iresnet_splits_and_inverts_as_gmia_iresnet_does(files):
  """Residual blocks cut at their sums; the same features, priors (total variation, l2, BN
  statistics), generator prior and keys give the same reconstruction."""
  network = onnx_split.import_split_network(files["iresnet_bn"], preprocessing=ARCFACE)
  variables = random_variables(MODEL)
  images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE, 3)), jnp.float32)
  cut = "layer1.1.add_out"  # gmia's "stage1".
  observed, embedding = jax.jit(lambda v, x: (MODEL.apply(v, x, capture=("stage1",))["stage1"],
                                              MODEL.apply(v, x)))(variables, images)
  device, server = jax.jit(lambda v, x: (
      network.model.apply(v, x, capture=(cut,))[cut],
      network.model.apply(v, observed, start=cut)))(network.variables, images)
  np.testing.assert_allclose(device, observed, atol=1e-5)
  np.testing.assert_allclose(server, embedding, atol=1e-4 * np.abs(embedding).max())
  assert features.batch_norms_before(MODEL, variables, SIZE, "stage1") == (
      features.batch_norms_before(network.model, network.variables, SIZE, cut))
  generator = stylegan.Generator(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1,
                                 channel_base=256, channel_max=16)
  g_vars = jax.jit(lambda: generator.init(
      {"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros((1, 8))))()
  settings = features.FeatureInversionSettings(layer="stage1", num_steps=10, bn_weight=1e-2,
                                               w_avg_samples=64)
  keys = jax.random.split(jax.random.key(3), 2)
  ours = features.make_feature_inverter(MODEL, settings, generator=generator)(
      variables, observed, keys, g_vars)
  theirs = features.make_feature_inverter(
      network.model, dataclasses.replace(settings, layer=cut), input_size=SIZE,
      generator=generator)(network.variables, observed, keys, g_vars)
  np.testing.assert_allclose(theirs["loss"], ours["loss"], rtol=1e-3)
  np.testing.assert_allclose(theirs["ws"], ours["ws"], atol=1e-4)
  np.testing.assert_allclose(theirs["images"], ours["images"], atol=1e-3)


def test_cuts_by_node_name_and_bypassed_tensors_refused(files):
  # The folded export keeps only the BNs that lead a block and the head's.
  network = onnx_split.import_split_network(
      files["iresnet"], preprocessing=ARCFACE, layers=("layer1.1.add", "prelu_out"))
  assert network.layers == ("prelu_out", "layer1.1.add_out")
  assert len(network.model.graph.batch_norms) == sum(MODEL.blocks) + 2
  with pytest.raises(ValueError, match="cannot be cut at 'layer1.0.prelu_out'"):
    onnx_split.import_split_network(files["iresnet"], preprocessing=ARCFACE,
                                    layers=("layer1.0.prelu",))
  with pytest.raises(ValueError, match=r"no tensor or node \['nowhere'\]"):
    onnx_split.import_split_network(files["iresnet"], preprocessing=ARCFACE,
                                    layers=("nowhere",))
  with pytest.raises(ValueError, match="unknown preprocessing preset"):
    onnx_split.import_split_network(files["iresnet"], preprocessing="bgr")
  with pytest.raises(ValueError, match="frozen"):
    network.model.apply(network.variables, jnp.zeros((1, SIZE, SIZE, 3)), train=True)


def test_a_graph_without_batch_norms_has_no_statistics_prior():
  weight = np.random.default_rng(4).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
  graph = helper.make_graph(
      [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
       helper.make_node("Relu", ["conv"], ["relu"]),
       helper.make_node("GlobalAveragePool", ["relu"], ["pooled"])], "tiny",
      [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
      [helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, None)],
      [onnx.numpy_helper.from_array(weight, "w")])
  network = onnx_split.import_split_network(helper.make_model(graph), preprocessing=ARCFACE)
  assert network.layers == ("relu",) and network.image_size == 8
  assert features.batch_norms_before(network.model, network.variables, 8, "relu") == 0
  images = np.random.default_rng(5).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  relu = network.model.apply(network.variables, images, capture=("relu",))["relu"]
  expected = jax.lax.conv_general_dilated(
      jnp.asarray(images), jnp.transpose(weight, (2, 3, 1, 0)), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(relu, np.maximum(expected, 0), atol=1e-5)
