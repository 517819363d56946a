"""Face matchers: networks that map an aligned face crop to an identity embedding.

A matcher is a gmia face encoder (a training workdir of train/train_face_encoder.py) or any
face-embedding ONNX model (translated by gmia.onnx, so it jits, shards and differentiates like
the rest). Every matcher takes the same input, crops f32[B, S, S, 3] RGB in 0..255 at its input
size S, and applies its own preprocessing, from a table of presets or explicit config fields:

  preset          input  channels  pixels            layout  embedding
  arcface         112    RGB       (x - 127.5)/127.5  NCHW    512 (insightface w600k_r50, ...)
  sface           112    RGB       x (0..255)         NCHW    128 (OpenCV Zoo SFace)
  mobilefacenet   112    RGB       (x - 127)/128      NCHW    512 (fr_feature.onnx and alike)

Embeddings are L2-normalised.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnx

from gmia import fingerprint, parallel
from gmia.checkpoint import Checkpointer
from gmia.onnx import import_onnx


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a network wants its crops: side, channel order, (x - mean) / std, memory layout."""
  input_size: int
  bgr: bool = False
  mean: float = 127.5
  std: float = 127.5
  nchw: bool = True


PRESETS = {
    "arcface": Preprocessing(112),
    "sface": Preprocessing(112, mean=0.0, std=1.0),
    "mobilefacenet": Preprocessing(112, mean=127.0, std=128.0),
}


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
    features = self.features(params, jnp.asarray(crops, jnp.float32)).astype(jnp.float32)
    return features * jax.lax.rsqrt(jnp.maximum(jnp.sum(features**2, -1, keepdims=True), 1e-24))


def config_fields() -> dict[str, Any]:
  """The config fields that choose a matcher (shared by every job that embeds faces)."""
  return {
      "encoder_workdir": "",   # A face encoder trained by train.train_face_encoder, or:
      "encoder_onnx": "",      # any face-embedding ONNX model ...
      "encoder_preset": "",    # ... with the preprocessing of a preset (arcface, sface,
                               # mobilefacenet) or the explicit fields below.
      "encoder_input_size": 0,   # 0: the preset's or the graph's.
      "encoder_bgr": False,
      "encoder_mean": -1.0,      # < 0: the preset's.
      "encoder_std": -1.0,
  }


def load_matcher(config: ml_collections.ConfigDict) -> Matcher:
  """The matcher named by `config` (see `config_fields`)."""
  if bool(config.encoder_workdir) == bool(config.encoder_onnx):
    raise ValueError("give exactly one of encoder_workdir (a gmia face encoder) and encoder_onnx "
                     "(any face-embedding ONNX model)")
  if config.encoder_workdir:
    return gmia_matcher(config.encoder_workdir)
  return onnx_matcher(config.encoder_onnx, _preprocessing(config))


def gmia_matcher(workdir: str) -> Matcher:
  """A face encoder trained by gmia: RGB, (x - 127.5) / 127.5, NHWC, its trained input size."""
  from gmia.face_encoder import trainer  # The trainer imports the data pipeline: only here.
  model, variables = trainer.load_encoder(workdir)
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.latest_step()
    size = int(checkpointer.restore_meta(step)["config"]["model"]["input_size"])
  finally:
    checkpointer.close()

  def features(variables, crops):
    return model.apply(variables, (crops - 127.5) / 127.5, train=False)

  return Matcher(f"gmia face encoder {workdir}", size, variables, features,
                 {"kind": "gmia", "step": int(step), "digest": fingerprint.tree_digest(variables)})


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
  preprocessing = preprocessing or PRESETS["arcface"]
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
  graph = onnx.load(path, load_external_data=False).graph
  shapes = {}
  for value in graph.input:
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
    if dims and not dims[0]:
      shapes[value.name] = (1, *dims[1:])
  return shapes


def _preprocessing(config: ml_collections.ConfigDict) -> Preprocessing | None:
  """The preset with the explicit fields applied; None when neither is given."""
  if config.encoder_preset and config.encoder_preset not in PRESETS:
    raise ValueError(f"unknown encoder_preset {config.encoder_preset!r}; presets: "
                     f"{sorted(PRESETS)}")
  explicit = (config.encoder_input_size > 0 or config.encoder_bgr or config.encoder_mean >= 0
              or config.encoder_std > 0)
  if not config.encoder_preset and not explicit:
    return None
  base = PRESETS.get(config.encoder_preset, Preprocessing(0))
  return dataclasses.replace(
      base, input_size=config.encoder_input_size or base.input_size,
      bgr=config.encoder_bgr or base.bgr,
      mean=config.encoder_mean if config.encoder_mean >= 0 else base.mean,
      std=config.encoder_std if config.encoder_std > 0 else base.std)


@functools.cache
def jitted_embed(matcher: Matcher) -> Callable[[Any, jax.Array], jax.Array]:
  """`matcher.embed` jitted once per matcher."""
  return jax.jit(matcher.embed)


def embed_crops(matcher: Matcher, crops: np.ndarray, mesh) -> np.ndarray:
  """Host crops [N, S, S, 3] RGB in 0..255 -> unit embeddings f32[N, D], in fixed-size chunks
  sharded over `mesh` (one compilation whatever N)."""
  return parallel.map_chunks(jitted_embed(matcher), matcher.params, np.asarray(crops, np.float32),
                             mesh, chunk=64)
