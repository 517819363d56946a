"""The split networks an inversion attacks, loaded from the workdirs that trained them."""

from __future__ import annotations

import ml_collections

from gmia.checkpoint import Checkpointer
from gmia.models.split import Network

# Network kind -> the trainer whose workdirs hold it.
KINDS = ("face_encoder", "classifier")


def load_network(network_config: ml_collections.ConfigDict) -> Network:
  """The split network a config's `network` block names (kind and workdir), at the input size
  it was trained on."""
  kind, workdir = network_config.kind, network_config.workdir
  if kind not in KINDS:
    raise ValueError(f"unknown network kind {kind!r}; choose from {KINDS}")
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
