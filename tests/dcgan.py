"""The `gan-face-generate` DCGAN (tests/assets.py) as an ONNX graph, built with onnx.helper.

Its torch.save state dict is read without torch; the graph is PyTorch's DCGAN generator
(ConvTranspose 100->512 k4 s1 p0, then 512->256->128->64 k4 s2 p1, each with BatchNorm (eps
1e-5, running statistics) and ReLU, then ConvTranspose 64->3 k4 s2 p1 and Tanh): z
f32[1, 100, 1, 1] -> image f32[1, 3, 64, 64] in [-1, 1].
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gmia.models.nvidia_pickle import read_torch_zip
from tests import assets

Z_DIM, RESOLUTION = 100, 64
# (ConvTranspose layer, its BatchNorm layer or None, stride, padding) in the state dict's names.
LAYERS = [(0, 1, 1, 0), (3, 4, 2, 1), (6, 7, 2, 1), (9, 10, 2, 1), (12, None, 2, 1)]


def state_dict() -> dict[str, np.ndarray]:
  """The generator's torch.save state dict, read without torch: {"main.0.weight": ..., ...}."""
  return read_torch_zip(assets.dcgan_weights_path())["netG_state_dict"]


def onnx_path(directory: str) -> str:
  """Writes (once) and returns the DCGAN's ONNX file in `directory`."""
  path = os.path.join(directory, "dcgan_face_generator.onnx")
  if os.path.exists(path):
    return path
  weights = state_dict()
  nodes, initializers, x = [], [], "z"
  for index, (conv, norm, stride, pad) in enumerate(LAYERS):
    name = f"main.{conv}.weight"
    initializers.append(numpy_helper.from_array(np.asarray(weights[name], np.float32), name))
    nodes.append(helper.make_node("ConvTranspose", [x, name], [f"conv{index}"],
                                  kernel_shape=[4, 4], strides=[stride, stride],
                                  pads=[pad] * 4, name=f"conv{index}"))
    x = f"conv{index}"
    if norm is None:
      nodes.append(helper.make_node("Tanh", [x], ["image"], name="tanh"))
      continue
    stats = [f"main.{norm}.{field}" for field in ("weight", "bias", "running_mean", "running_var")]
    initializers += [numpy_helper.from_array(np.asarray(weights[s], np.float32), s) for s in stats]
    nodes.append(helper.make_node("BatchNormalization", [x, *stats], [f"bn{index}"],
                                  epsilon=1e-5, name=f"bn{index}"))
    nodes.append(helper.make_node("Relu", [f"bn{index}"], [f"relu{index}"], name=f"relu{index}"))
    x = f"relu{index}"
  graph = helper.make_graph(
      nodes, "dcgan_face_generator",
      [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, Z_DIM, 1, 1])],
      [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, RESOLUTION, RESOLUTION])],
      initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  onnx.save(model, path + ".part")
  os.replace(path + ".part", path)
  return path
