"""Real networks through gmia.onnx against onnxruntime: SFace (int8 blocks), YuNet, a
MobileFaceNet and gmia's own insightface-layout IResNet export.

Each output must match onnxruntime within 1e-4 of its largest magnitude, jitted and vmapped over
a batch (and, for the small IResNet, run op by op without jit, which takes seconds on the large
ones); the files come from registry packages (tests/assets.py).
"""

import functools
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from gmia.onnx import import_onnx  # noqa: E402
from tests import assets  # noqa: E402
from tests.iresnet_onnx_export import MODEL, SIZE, export_onnx, random_variables  # noqa: E402

BATCH = 3
# Input ranges: SFace and YuNet read 0..255, the MobileFaceNet and IResNet [-1, 1].
NETWORKS = {"sface": (assets.sface_path, 0.0, 255.0), "yunet": (assets.yunet_path, 0.0, 255.0),
            "mobilefacenet": (assets.mobilefacenet_path, -1.0, 1.0)}


@functools.cache
def iresnet_path(folder):
  import onnx
  path = f"{folder}/iresnet.onnx"
  onnx.save(export_onnx(MODEL, random_variables(MODEL), fold_bn=True), path)
  return path


@pytest.fixture(scope="session")
def network_file(tmp_path_factory):
  def find(name):
    if name == "iresnet":
      return iresnet_path(str(tmp_path_factory.mktemp("iresnet"))), -1.0, 1.0
    path, low, high = NETWORKS[name]
    return path(), low, high
  return functools.cache(find)


def close(got, expected):
  """Largest error relative to the output's scale."""
  return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", ["sface", "yunet", "mobilefacenet", "iresnet"])
def test_network_matches_onnxruntime(name, network_file):
  path, low, high = network_file(name)
  net = import_onnx(path, input_shapes={"input.1": (1, 3, SIZE, SIZE)} if name == "iresnet"
                    else None)
  session = assets.onnxruntime_session(path)
  shape = net.input_shapes[0]
  x = np.random.default_rng(0).uniform(low, high, (BATCH,) + shape[1:]).astype(np.float32)
  expected = [session.run(None, {net.input_names[0]: x[i:i + 1]}) for i in range(BATCH)]
  outputs = lambda y: y if isinstance(y, tuple) else (y,)
  runs = [jax.jit(net.apply)] + ([net.apply] if name == "iresnet" else [])
  for run in runs:
    got = outputs(run(net.params, x[:1]))
    for k, tensor in enumerate(net.output_names):
      assert close(got[k], expected[0][k]) < 1e-4, tensor
  batched = outputs(jax.jit(net.apply_each)(net.params, x))
  for k, tensor in enumerate(net.output_names):
    reference = np.concatenate([e[k] for e in expected])
    assert batched[k].shape == reference.shape
    assert close(batched[k], reference) < 1e-4, tensor


def test_batch_polymorphic_export_and_split_points(network_file):
  # gmia's IResNet export has a free batch: import it at the batch it runs at. Its split points
  # are the stem, every residual block's output and the dense layer's (before the features
  # BN); features at one of them fed back give the embedding again.
  path, _, _ = network_file("iresnet")
  net = import_onnx(path, input_shapes={"input.1": (BATCH, 3, SIZE, SIZE)})
  blocks = [f"layer{stage + 1}.{block}.add_out" for stage, count in enumerate(MODEL.blocks)
            for block in range(count)]
  assert net.split_points == ("prelu_out", *blocks, "fc_out")
  x = np.random.default_rng(1).uniform(-1, 1, (BATCH, 3, SIZE, SIZE)).astype(np.float32)
  expected = assets.onnxruntime_session(path).run(None, {"input.1": x})[0]
  split = net.split_points[3]
  features, embedding = jax.jit(lambda p, x: net.apply(p, x, outputs=(split, net.output_names[0]))
                                )(net.params, x)
  assert close(embedding, expected) < 1e-4
  again = jax.jit(lambda p, f: net.apply(p, feeds={split: f}))(net.params, features)
  assert close(again, expected) < 1e-4


def test_gradient_through_sface_matches_finite_differences(network_file):
  # Along the gradient's own direction the derivative is the gradient's norm: a central
  # difference of 0.3 grey levels gives it within 0.1% (measured 9e-4; float32 rounding of the
  # output is 1e-5 of it, the rest curvature). A gradient that drops or scales a path (through
  # the int8 blocks, a PReLU's negative side) misses it by far more than the 1% allowed.
  path, _, _ = network_file("sface")
  net = import_onnx(path)
  x = np.random.default_rng(2).uniform(0, 255, net.input_shapes[0]).astype(np.float32)
  weights = np.random.default_rng(3).normal(size=net.output_shapes[0]).astype(np.float32)
  f = jax.jit(lambda x: jnp.sum(net.apply(net.params, x) * weights))
  grad = np.asarray(jax.jit(jax.grad(f))(x), np.float64)
  norm = np.linalg.norm(grad)
  assert np.isfinite(grad).all() and norm > 0
  direction, step = (grad / norm).astype(np.float32), 0.3
  central = (float(f(x + step * direction)) - float(f(x - step * direction))) / (2 * step)
  assert abs(central - norm) < 1e-2 * norm, (central, norm)


@pytest.mark.parametrize("ci", ["", "1"])
def test_an_asset_no_registry_serves_fails_in_ci_after_a_retry(ci, monkeypatch, tmp_path):
  calls = []

  def offline(command, **_):
    calls.append(command)
    return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not fetch URL https://x: "
                                       "Read timed out.")

  monkeypatch.setenv("CI", ci)
  monkeypatch.setenv("GMIA_TEST_ASSETS", str(tmp_path))
  monkeypatch.setattr(assets, "RETRY_AFTER", 0)
  monkeypatch.setattr(assets.subprocess, "run", offline)
  monkeypatch.setattr(assets.shutil, "which", lambda _: None)  # No npm either.
  # Caught either way, so that a skip where a failure is due fails this test, not skips it.
  outcomes = (pytest.fail.Exception, pytest.skip.Exception)
  want = pytest.fail.Exception if ci else pytest.skip.Exception
  with pytest.raises(outcomes, match="no package registry reachable") as caught:
    assets.sface_path()
  assert caught.type is want and len(calls) == (2 if ci else 1)
  with pytest.raises(outcomes, match="npm is not installed") as caught:
    assets.mobilefacenet_path()
  assert caught.type is want
