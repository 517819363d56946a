"""The split networks an inversion attacks: trained by gmia (loaded from their workdirs) or
imported from ONNX (gmia.models.onnx_split)."""

from __future__ import annotations

import ml_collections

from gmia.checkpoint import Checkpointer
from gmia.models.split import Network

# Network kind -> the trainer whose workdirs hold it; "onnx": any ONNX image network.
KINDS = ("face_encoder", "classifier", "onnx")


def default_config() -> ml_collections.ConfigDict:
  """The `network` block of every config that names a split network."""
  return ml_collections.ConfigDict({
      "kind": "face_encoder",  # One of KINDS.
      "workdir": "",           # face_encoder / classifier: the workdir that trained it.
      "onnx": "",              # onnx: the .onnx file,
      "preset": "",            # its preprocessing (gmia.faces.matchers.PRESETS; "": arcface's),
      "layers": (),            # and where it is cut (tensor or node names; (): the importer's
                               # split points).
  })


def load_network(network_config: ml_collections.ConfigDict) -> Network:
  """The split network a config's `network` block names, at the input size it reads."""
  kind = network_config.kind
  if kind not in KINDS:
    raise ValueError(f"unknown network kind {kind!r}; choose from {KINDS}")
  if kind == "onnx":
    if not network_config.get("onnx"):
      raise ValueError("config.network.onnx is required for kind 'onnx': the .onnx file to invert")
    from gmia.models.onnx_split import import_split_network
    return import_split_network(network_config.onnx,
                                preprocessing=network_config.preset or "arcface",
                                layers=tuple(network_config.layers) or None)
  workdir = network_config.workdir
  if not workdir:
    raise ValueError("config.network.workdir is required: the workdir of the network to invert")
  if kind == "face_encoder":
    from gmia.face_encoder.trainer import load_encoder as load
  else:
    from gmia.classifier.trainer import load_classifier as load
  model, variables = load(workdir)
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    image_size = int(checkpointer.restore_meta()["config"]["model"]["input_size"])
  finally:
    checkpointer.close()
  return Network(model, variables, image_size)
