"""The split networks an inversion attacks, named by a `matcher` block (gmia.faces.matchers) with
the layers where they are cut: a workdir gmia trained (a face encoder or a classifier, loaded
with gmia.runs) or any ONNX image network (gmia.models.onnx_split)."""

from __future__ import annotations

import ml_collections

from gmia.faces import matchers
from gmia.models.split import Network
from gmia.runs import load_run

# The kinds of gmia runs that can be split.
RUN_KINDS = ("face_encoder", "classifier")


def default_config() -> ml_collections.ConfigDict:
  """The `network` block of every config that names a split network: a matcher block and
  `layers`, where it is cut (tensor or node names of an ONNX graph; (): the importer's split
  points; gmia's networks are cut at the job's own `layers`)."""
  return matchers.default_config(layers=())


def load_network(block: ml_collections.ConfigDict, name: str = "network") -> Network:
  """The split network a `network` block names, at the input size it reads."""
  if matchers.kind_of(block, name) == "onnx":
    from gmia.models.onnx_split import import_split_network
    return import_split_network(block.path, preprocessing=block.preset or "arcface",
                                layers=tuple(block.layers) or None)
  run = load_run(block.path, RUN_KINDS)
  return Network(run.model, run.variables, run.input_size)
