"""Generated faces and their identity embeddings, chunk by chunk, in one compiled call.

Chunk c holds samples c * chunk_size ... (c + 1) * chunk_size - 1; its latents come from
fold_in(key(seed), c), so any chunk (or any single sample, for a figure) can be regenerated on
its own and a resumed attack sees exactly the samples it would have seen. Latents are split over
the mesh's data axis: generation and embedding run data-parallel on every device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia import parallel
from gmia.face_encoder.embed import embed
from gmia.models.iresnet import IResNet
from gmia.models.stylegan import Generator


def make_generate_embed(generator: Generator, g_vars: Any, encoder: IResNet, e_vars: Any, *,
                        seed: int, chunk_size: int, mesh: Mesh, truncation_psi: float = 1.0
                        ) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
  """Returns chunk -> (images f32[C, R, R, 3] in [-1, 1], unit embeddings f32[C, D])."""
  parallel.check_divisible(chunk_size, mesh)
  base = jax.random.key(seed)
  g_vars = jax.device_put(g_vars, parallel.replicated(mesh))
  e_vars = jax.device_put(e_vars, parallel.replicated(mesh))

  @jax.jit
  def run(g_vars, e_vars, chunk):
    key = jax.random.fold_in(base, chunk)
    z = jax.random.normal(key, (chunk_size, generator.z_dim))
    z = jax.lax.with_sharding_constraint(z, parallel.data_sharding(mesh))
    images = generator.apply(g_vars, z, truncation_psi, None, "const", rngs={"noise": key})
    images = jnp.clip(images, -1.0, 1.0)
    return images, embed(encoder, e_vars, images)

  def chunk_fn(chunk: int) -> tuple[np.ndarray, np.ndarray]:
    images, embeddings = run(g_vars, e_vars, jnp.int32(chunk))
    return np.asarray(images), np.asarray(embeddings)

  return chunk_fn


def samples_by_index(chunk_fn: Callable[[int], tuple[np.ndarray, np.ndarray]], chunk_size: int,
                     indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(images f32[M, R, R, 3], embeddings f32[M, D]) of the samples with the given global indices.

  Each chunk involved is generated once.
  """
  indices = np.asarray(indices)
  chunks = {c: chunk_fn(c) for c in np.unique(indices // chunk_size).tolist()}
  picked = [tuple(part[i % chunk_size] for part in chunks[i // chunk_size])
            for i in indices.tolist()]
  return np.stack([p[0] for p in picked]), np.stack([p[1] for p in picked])
