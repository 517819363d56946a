"""A generator's samples, aligned and embedded, by sample index.

Sample i comes from the source as a pure function of (seed, i) (gmia.sources), so any chunk of
indices, a resumed run or a figure's single sample sees the same images. A chunk is generated,
aligned and embedded split over the mesh's data axis; chunks are padded to one size, so each
program compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from gmia import parallel, viz
from gmia.faces import detect
from gmia.faces.embedder import FaceEmbedder, jitted_embed
from gmia.sources import Source

DEFAULT_CHUNK = 500  # Samples per chunk, unless a job says otherwise.


@dataclasses.dataclass(frozen=True)
class SampleEmbedder:
  """embed(indices i64[n]) -> (ids i64[m], unit embeddings f32[m, D]) of the samples among
  `indices` with a usable face (all of them unless alignment is `detect`), any n, in chunks;
  with_images(indices) -> the same and their images u8[m, R, R, 3] (n up to a chunk);
  images(indices) -> u8[n, R, R, 3]."""
  embed: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  with_images: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
  images: Callable[[np.ndarray], np.ndarray]


def make_sample_embedder(source: Source, embedder: FaceEmbedder, mesh: Mesh,
                         chunk_size: int) -> SampleEmbedder:
  """Embeds `source`'s samples with `embedder`, `chunk_size` (a multiple of the mesh's devices)
  at a time."""
  parallel.check_divisible(chunk_size, mesh)
  embedder = embedder.for_samples(source.resolution)
  params = jax.device_put(embedder.params, parallel.replicated(mesh))
  embed_fn = jitted_embed(embedder)
  described = []  # Whether a chunk without a usable face was described (once is enough).

  def embedded(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, jax.Array, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    padded = np.concatenate([indices, np.full(chunk_size - len(indices), indices[-1])])
    images = jax.device_put(source.sample(padded, mesh), parallel.data_sharding(mesh))
    embeddings, status = parallel.to_host(embed_fn(params, (images + 1.0) * 127.5))
    usable = status[:len(indices)] == detect.FOUND
    if not usable.any() and not described:
      described.append(True)
      logging.warning("no usable face in samples %d-%d: %s", indices[0], indices[-1],
                      embedder.describe_detections(params, (images[:len(indices)] + 1.0) * 127.5))
    return indices[usable], embeddings[:len(indices)][usable], images, usable

  def embed(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [embedded(indices[start:start + chunk_size])[:2]
             for start in range(0, len(indices), chunk_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  def with_images(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, embeddings, images, usable = embedded(indices)
    return ids, embeddings, viz.to_uint8(parallel.to_host(images)[:len(usable)][usable])

  return SampleEmbedder(embed, with_images,
                        lambda indices: draw(source, indices, mesh, chunk_size))


def draw(source: Source, indices: np.ndarray, mesh: Mesh, chunk_size: int) -> np.ndarray:
  """Images u8[N, R, R, 3] of samples `indices`, drawn in chunks padded to `chunk_size` as an
  attack with that chunk size draws them: a program's results can depend on its batch size (on
  a CPU, one sample alone differs from the same sample in a batch by 1e-6), so the same chunk
  size gives the same images bit for bit."""
  indices = np.asarray(indices, np.int64)
  chunks = []
  for start in range(0, len(indices), chunk_size):
    part = indices[start:start + chunk_size]
    padded = np.concatenate([part, np.full(chunk_size - len(part), part[-1])])
    chunks.append(viz.to_uint8(parallel.to_host(source.sample(padded, mesh)))[:len(part)])
  side = source.resolution
  return np.concatenate(chunks) if chunks else np.zeros((0, side, side, 3), np.uint8)
