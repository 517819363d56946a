"""insightface ONNX import: graphs in arcface_torch's export layout, run by onnxruntime.

The graphs are built here from random weights with onnx.helper, in PyTorch's NCHW conventions:
one with every BN explicit, one with the BNs after convs folded into conv weights and biases (as in
the released w600k_r50.onnx). Both are run with onnxruntime and must match the imported Flax
IResNet to 1e-4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gmia.models.import_insightface import load_onnx, variables_from_onnx  # noqa: E402
from gmia.models.iresnet import IResNet  # noqa: E402

BLOCKS, WIDTH, SIZE, FEATURES = (2, 2, 2, 2), 8, 32, 16


class InsightfaceGraph:
  """Emits nodes and initializers of an arcface_torch IResNet export."""

  def __init__(self, rng: np.random.Generator, folded: bool):
    self.rng, self.folded = rng, folded
    self.nodes, self.inits = [], []

  def const(self, name, value):
    self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name

  def node(self, op, inputs, name, **attrs):
    out = f"{name}_out"
    self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
    return out

  def bn_params(self, c):
    r = self.rng
    return (r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c),
            r.uniform(0.5, 1.5, c))

  def bn(self, x, c, name):
    scale, bias, mean, var = self.bn_params(c)
    ins = [self.const(f"{name}.{k}", v) for k, v in
           zip(("weight", "bias", "running_mean", "running_var"), (scale, bias, mean, var))]
    return self.node("BatchNormalization", [x] + ins, name, epsilon=1e-5)

  def conv_bn(self, x, cin, cout, k, stride, name):
    """Conv (no bias) + BN, or the two folded into one conv with a bias."""
    w = self.rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k))
    pads = [k // 2] * 4
    if not self.folded:
      y = self.node("Conv", [x, self.const(f"{name}.conv.weight", w)], f"{name}.conv",
                    kernel_shape=[k, k], strides=[stride, stride], pads=pads)
      return self.bn(y, cout, f"{name}.bn")
    scale, bias, mean, var = self.bn_params(cout)
    factor = scale / np.sqrt(var + 1e-5)
    # Exported folded tensors get numeric names.
    n = len(self.inits)
    ins = [self.const(f"onnx::Conv_{n}", w * factor[:, None, None, None]),
           self.const(f"onnx::Conv_{n + 1}", bias - mean * factor)]
    return self.node("Conv", [x] + ins, f"{name}.conv", kernel_shape=[k, k],
                     strides=[stride, stride], pads=pads)

  def prelu(self, x, c, name):
    slope = self.const(f"{name}.weight", self.rng.uniform(0.1, 0.4, (c, 1, 1)))
    return self.node("PRelu", [x, slope], name)

  def model(self, blocks, width, size, features):
    x = self.conv_bn("input.1", 3, width, 3, 1, "stem")
    x = self.prelu(x, width, "prelu")
    cin = width
    for stage, n in enumerate(blocks):
      cout = width * 2**stage
      for b in range(n):
        name = f"layer{stage + 1}.{b}"
        y = self.bn(x, cin, f"{name}.bn1")
        y = self.conv_bn(y, cin, cout, 3, 1, f"{name}.1")
        y = self.prelu(y, cout, f"{name}.prelu")
        y = self.conv_bn(y, cout, cout, 3, 2 if b == 0 else 1, f"{name}.2")
        shortcut = self.conv_bn(x, cin, cout, 1, 2, f"{name}.downsample") if b == 0 else x
        x = self.node("Add", [y, shortcut], f"{name}.add")
        cin = cout
    x = self.bn(x, cin, "bn2")
    x = self.node("Flatten", [x], "flatten", axis=1)
    rows = cin * (size // 16) ** 2
    w = self.rng.normal(0, 1 / np.sqrt(rows), (features, rows))
    b = self.rng.normal(0, 0.1, features)
    x = self.node("Gemm", [x, self.const("fc.weight", w), self.const("fc.bias", b)], "fc",
                  transB=1)
    scale, bias, mean, var = np.ones(features), *self.bn_params(features)[1:]
    ins = [self.const(f"features.{k}", v) for k, v in
           zip(("weight", "bias", "running_mean", "running_var"), (scale, bias, mean, var))]
    out = self.node("BatchNormalization", [x] + ins, "features", epsilon=1e-5)
    graph = helper.make_graph(
        self.nodes, "iresnet",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", features])], self.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def build(folded, blocks=BLOCKS, width=WIDTH, seed=0):
  return InsightfaceGraph(np.random.default_rng(seed), folded).model(blocks, width, SIZE, FEATURES)


MODEL = IResNet(blocks=BLOCKS, width=WIDTH, num_features=FEATURES)


@functools.cache
def apply_fn():
  return jax.jit(lambda v, x: MODEL.apply(v, x))


@pytest.mark.parametrize("folded", [False, True], ids=["explicit_bn", "folded_bn"])
def test_imported_model_matches_onnxruntime(folded, tmp_path):
  path = tmp_path / "model.onnx"
  onnx.save(build(folded), str(path))
  images = np.random.default_rng(1).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  expected = session.run(None, {"input.1": images.transpose(0, 3, 1, 2)})[0]
  variables = load_onnx(str(path), MODEL)
  got = np.asarray(apply_fn()(variables, jnp.asarray(images)))
  assert np.abs(expected).max() > 0.1  # A degenerate graph would make the comparison vacuous.
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_width_mismatch_names_first_misshapen_tensor():
  expected = r"stem\.conv\.weight.*stem_conv/kernel.*\(3, 3, 3, 16\).*\(3, 3, 3, 8\)"
  with pytest.raises(ValueError, match=expected):
    variables_from_onnx(build(False, width=16), MODEL)


def test_other_depth_names_first_differing_block():
  with pytest.raises(ValueError, match=r"stage1_block2: the file starts a new stage"):
    variables_from_onnx(build(True, blocks=(1, 1, 1, 1)), MODEL)
  shallow = IResNet(blocks=(1, 1, 1, 1), width=WIDTH, num_features=FEATURES)
  with pytest.raises(ValueError, match=r"stage2_block1: the model starts a new stage"):
    variables_from_onnx(build(True), shallow)


def test_missing_initializer_is_named():
  proto = build(False)
  kept = [t for t in proto.graph.initializer if t.name != "layer2.0.1.conv.weight"]
  del proto.graph.initializer[:]
  proto.graph.initializer.extend(kept)
  with pytest.raises(ValueError, match=r"stage2_block1/conv1.*layer2\.0\.1\.conv\.weight.*missing"):
    variables_from_onnx(proto, MODEL)


def test_truncated_file_is_rejected(tmp_path):
  path = tmp_path / "truncated.onnx"
  data = build(True).SerializeToString()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"not a readable ONNX model|missing|expected one"):
    load_onnx(str(path), MODEL)
