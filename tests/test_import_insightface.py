"""insightface ONNX export and import, with onnxruntime as the independent reference.

Random IResNet variables (every BN with non-trivial statistics) are exported to the insightface
layout, once with every BN explicit and once with the BNs after convs folded into conv weights and
biases (as in the released w600k_r50.onnx). onnxruntime runs each graph: its output must match the
Flax model on the exported variables (the export is right) and on the variables imported back from
the graph (the import is right), to 1e-4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gmia.models.iresnet import IResNet  # noqa: E402
from tests.iresnet_onnx_export import (BLOCKS, FEATURES, INPUT_NAME, MODEL, SIZE,  # noqa: E402
                                       WIDTH, export_onnx, random_variables)
from tests.iresnet_onnx_import import load_onnx, variables_from_onnx  # noqa: E402

@functools.cache
def apply_fn():
  return jax.jit(lambda v, x: MODEL.apply(v, x))


@pytest.mark.parametrize("fold_bn", [False, True], ids=["explicit_bn", "folded_bn"])
def test_export_and_import_match_onnxruntime(fold_bn, tmp_path):
  variables = random_variables(MODEL)
  path = tmp_path / "model.onnx"
  onnx.save(export_onnx(MODEL, variables, fold_bn=fold_bn), str(path))
  images = np.random.default_rng(1).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  expected = session.run(None, {INPUT_NAME: images.transpose(0, 3, 1, 2)})[0]
  assert np.abs(expected).max() > 0.1  # A degenerate graph would make the comparison vacuous.
  exported_from = np.asarray(apply_fn()(variables, jnp.asarray(images)))
  np.testing.assert_allclose(exported_from, expected, atol=1e-4, rtol=0)
  imported = np.asarray(apply_fn()(load_onnx(str(path), MODEL), jnp.asarray(images)))
  np.testing.assert_allclose(imported, expected, atol=1e-4, rtol=0)


def test_export_names_tensors_like_arcface_torch():
  names = {t.name for t in export_onnx(MODEL, random_variables(MODEL), fold_bn=False)
           .graph.initializer}
  assert {"conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight",
          "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias", "layer4.1.conv2.weight",
          "bn2.weight", "fc.weight", "features.running_mean"} <= names
  assert "layer1.1.downsample.0.weight" not in names
  folded = [t.name for t in export_onnx(MODEL, random_variables(MODEL), fold_bn=True)
            .graph.initializer]
  assert "layer1.0.bn2.weight" not in folded and folded[0].startswith("onnx::Conv_")


def test_export_rejects_variables_of_another_model():
  wide = IResNet(blocks=BLOCKS, width=16, num_features=FEATURES)
  with pytest.raises(ValueError, match=r"fc/kernel has 512 rows, not 64 channels"):
    export_onnx(MODEL, random_variables(wide), fold_bn=False)
  shallow = IResNet(blocks=(1, 1, 1, 1), width=WIDTH, num_features=FEATURES)
  with pytest.raises(ValueError, match=r"have no \['batch_stats'\]\['stage1_block2'\]"):
    export_onnx(MODEL, random_variables(shallow), fold_bn=False)
  narrow_head = IResNet(blocks=BLOCKS, width=WIDTH, num_features=8)
  with pytest.raises(ValueError, match=r"\['features'\]\['mean'\] has shape \(8,\).*\(16,\)"):
    export_onnx(MODEL, random_variables(narrow_head), fold_bn=False)


def test_width_mismatch_names_first_misshapen_tensor():
  wide = IResNet(blocks=BLOCKS, width=16, num_features=FEATURES)
  expected = r"conv1\.weight.*stem_conv/kernel.*\(3, 3, 3, 16\).*\(3, 3, 3, 8\)"
  with pytest.raises(ValueError, match=expected):
    variables_from_onnx(export_onnx(wide, random_variables(wide), fold_bn=False), MODEL)


def test_other_depth_names_first_differing_block():
  shallow = IResNet(blocks=(1, 1, 1, 1), width=WIDTH, num_features=FEATURES)
  with pytest.raises(ValueError, match=r"stage1_block2: the file starts a new stage"):
    variables_from_onnx(export_onnx(shallow, random_variables(shallow), fold_bn=True), MODEL)
  with pytest.raises(ValueError, match=r"stage2_block1: the model starts a new stage"):
    variables_from_onnx(export_onnx(MODEL, random_variables(MODEL), fold_bn=True), shallow)


def test_missing_initializer_is_named():
  proto = export_onnx(MODEL, random_variables(MODEL), fold_bn=False)
  kept = [t for t in proto.graph.initializer if t.name != "layer2.0.conv1.weight"]
  del proto.graph.initializer[:]
  proto.graph.initializer.extend(kept)
  with pytest.raises(ValueError, match=r"stage2_block1/conv1.*layer2\.0\.conv1\.weight.*missing"):
    variables_from_onnx(proto, MODEL)


def test_truncated_file_is_rejected(tmp_path):
  path = tmp_path / "truncated.onnx"
  data = export_onnx(MODEL, random_variables(MODEL), fold_bn=True).SerializeToString()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"not a readable ONNX model|missing|expected one"):
    load_onnx(str(path), MODEL)
