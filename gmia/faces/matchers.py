"""Face matchers: networks that map an aligned face crop to an identity embedding.

A matcher is named by a `matcher` config block, the same wherever a face network is named (the
attack's matcher, an inverted network, the judge of an inversion):

  kind        "gmia": a workdir gmia trained (a face encoder, or for an inversion a classifier);
              "onnx": any face-embedding ONNX model (translated by gmia.onnx, so it jits, shards
              and differentiates like the rest); "": told by the path (a folder is a workdir)
  path        the workdir or the .onnx file
  preset      an ONNX model's preprocessing (gmia.models.preprocessing.PRESETS), or the explicit
  input_size, bgr, mean, std  fields (0 / -1: the preset's, or read from the graph)

Every matcher takes the same input, crops f32[B, S, S, 3] RGB in 0..255 at its input size S, and
applies its own preprocessing. Embeddings are L2-normalised.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmia import fingerprint, parallel
from gmia.models.preprocessing import PRESETS, Preprocessing, normalize
from gmia.onnx import import_onnx, load_model
from gmia.runs import load_run


@dataclasses.dataclass(frozen=True, eq=False)
class Matcher:
  """A face matcher: `embed(params, crops)` with crops f32[B, S, S, 3] RGB in 0..255
  (S = input_size) -> unit f32[B, D]. fingerprint: what the matcher is (for the attacks'
  input records); name: for reports."""
  name: str
  input_size: int
  params: Any
  features: Callable[[Any, jax.Array], jax.Array]
  fingerprint: dict[str, Any]

  def embed(self, params: Any, crops: jax.Array) -> jax.Array:
    """crops f32[B, S, S, 3] RGB in 0..255 -> unit embeddings f32[B, D]; jittable."""
    if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
      raise ValueError(f"{self.name} embeds crops [B, {self.input_size}, {self.input_size}, 3], "
                       f"got shape {crops.shape}")
    return normalize(self.features(params, jnp.asarray(crops, jnp.float32)).astype(jnp.float32))


KINDS = ("gmia", "onnx")


def default_config(**fields: Any) -> ml_collections.ConfigDict:
  """A `matcher` config block (see the module docstring), with `fields` set."""
  block = ml_collections.ConfigDict({
      "kind": "",         # gmia | onnx | "": a folder is a gmia workdir, a file an ONNX model.
      "path": "",
      "preset": "",       # onnx: arcface | sface | mobilefacenet, or the fields below.
      "input_size": 0,    # 0: the preset's or the graph's.
      "bgr": False,
      "mean": -1.0,       # < 0: the preset's.
      "std": -1.0,
  })
  block.update(fields)
  return block


def kind_of(block: ml_collections.ConfigDict, name: str = "matcher") -> str:
  """The block's kind ("gmia" or "onnx"), told by the path when not given; ValueError naming
  `name` when the block names no network or an unknown kind."""
  if not block.path:
    raise ValueError(f"config.{name}.path is required: a face encoder workdir gmia trained, or an "
                     "ONNX face matcher (.onnx)")
  if block.kind and block.kind not in KINDS:
    raise ValueError(f"unknown config.{name}.kind {block.kind!r}; choose from {KINDS}")
  if not os.path.exists(block.path):
    raise ValueError(f"config.{name}.path={block.path!r} does not exist")
  return block.kind or ("gmia" if os.path.isdir(block.path) else "onnx")


def load_matcher(block: ml_collections.ConfigDict, name: str = "matcher") -> Matcher:
  """The matcher a `matcher` block names (`name`: the block's config field, for errors)."""
  if kind_of(block, name) == "gmia":
    return gmia_matcher(block.path)
  return onnx_matcher(block.path, _preprocessing(block, name))


def gmia_matcher(workdir: str) -> Matcher:
  """A face encoder trained by gmia: RGB, (x - 127.5) / 127.5, NHWC, its trained input size."""
  run = load_run(workdir, "face_encoder")
  model, variables = run.model, run.variables

  def features(variables, crops):
    return model.apply(variables, (crops - 127.5) / 127.5, train=False)

  return Matcher(f"gmia face encoder {workdir}", run.input_size, variables, features,
                 {"kind": "gmia", "step": run.step, "digest": fingerprint.tree_digest(variables)})


def onnx_matcher(path: str, preprocessing: Preprocessing | None) -> Matcher:
  """Any face-embedding ONNX model: one image input [1 or B, 3, S, S] (NCHW) or [.., S, S, 3],
  one embedding output. preprocessing None: the input size read from the graph, and the
  arcface preset's pixels."""
  net = import_onnx(path, input_shapes=_batch_one(path))
  if len(net.input_names) != 1 or len(net.output_names) != 1:
    raise ValueError(f"{path}: a face matcher has one image input and one embedding output, the "
                     f"graph has inputs {list(net.input_names)} and outputs "
                     f"{list(net.output_names)}")
  shape = net.input_shapes[0]
  nchw = len(shape) == 4 and shape[1] == 3
  side = shape[2] if nchw else shape[1] if len(shape) == 4 else 0
  if len(shape) != 4 or (not nchw and shape[3] != 3) or shape[1 + nchw] != shape[2 + nchw]:
    raise ValueError(f"{path}: input {net.input_names[0]!r} of shape {shape} is not a square "
                     "RGB image batch")
  # No preset: arcface's pixels at the graph's own input size.
  preprocessing = preprocessing or dataclasses.replace(PRESETS["arcface"], input_size=0)
  if preprocessing.input_size and preprocessing.input_size != side:
    raise ValueError(f"{path} reads {side} px crops, the preprocessing says "
                     f"{preprocessing.input_size}")
  on_cpu = jax.default_backend() == "cpu"

  def features(params, crops):
    x = crops[..., ::-1] if preprocessing.bgr else crops
    x = (x - preprocessing.mean) / preprocessing.std
    if nchw:
      x = jnp.transpose(x, (0, 3, 1, 2))
    # Exported matchers fix batch 1; on a CPU, chunks of 8 keep activations in its caches.
    return net.apply_each(params, x, batch_size=8 if on_cpu else None)

  with open(path, "rb") as handle:
    digest = hashlib.sha256(handle.read()).hexdigest()[:16]
  return Matcher(f"ONNX matcher {path}", side, net.params, features,
                 {"kind": "onnx", "sha256": digest, "preprocessing": dataclasses.asdict(
                     dataclasses.replace(preprocessing, input_size=side))})


def _batch_one(path: str) -> dict[str, tuple[int, ...]]:
  """{input: its declared shape with batch 1} for the inputs whose batch dim is free: matchers
  run per sample."""
  graph = load_model(path, external_data=False).graph
  shapes = {}
  for value in graph.input:
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
    if dims and not dims[0]:
      shapes[value.name] = (1, *dims[1:])
  return shapes


def _preprocessing(block: ml_collections.ConfigDict, name: str) -> Preprocessing | None:
  """The preset with the explicit fields applied; None when neither is given."""
  if block.preset and block.preset not in PRESETS:
    raise ValueError(f"unknown config.{name}.preset {block.preset!r}; presets: "
                     f"{sorted(PRESETS)}")
  explicit = block.input_size > 0 or block.bgr or block.mean >= 0 or block.std > 0
  if not block.preset and not explicit:
    return None
  base = PRESETS.get(block.preset, Preprocessing(0))
  return dataclasses.replace(
      base, input_size=block.input_size or base.input_size, bgr=block.bgr or base.bgr,
      mean=block.mean if block.mean >= 0 else base.mean,
      std=block.std if block.std > 0 else base.std)


@functools.cache
def jitted_embed(matcher: Matcher) -> Callable[[Any, jax.Array], jax.Array]:
  """`matcher.embed` jitted once per matcher."""
  return jax.jit(matcher.embed)


def embed_crops(matcher: Matcher, crops: np.ndarray, mesh) -> np.ndarray:
  """Host crops [N, S, S, 3] RGB in 0..255 -> unit embeddings f32[N, D], in fixed-size chunks
  sharded over `mesh` (one compilation whatever N)."""
  return parallel.map_chunks(jitted_embed(matcher), matcher.params, np.asarray(crops, np.float32),
                             mesh, chunk=64)
