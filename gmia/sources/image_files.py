"""Samples handed out as images (services, diffusion models): a folder, an .npz or a .tar.

Black box: no latents, no gradients. Sample i is the i-th image (files in sorted name order;
the .npz array `images`, u8[N, H, W, 3]); all must have one square size. The fingerprint hashes
every image's bytes, so another folder under the same path is another source.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia.data import photos
from gmia.sources.base import Source


def open_images(path: str) -> Source:
  """The images at `path` (a folder, .npz or .tar) as a source."""
  if os.path.isdir(path):
    names = photos.files_in(path)
    read = lambda i: photos.decode(names[i])
    digest = _digest_files(names)
  elif path.endswith(".npz"):
    with np.load(path) as archive:
      if "images" not in archive.files:
        raise ValueError(f"{path} has no array 'images' (it has {archive.files})")
      stored = archive["images"]
    if stored.ndim != 4 or stored.shape[-1] != 3 or stored.dtype != np.uint8:
      raise ValueError(f"{path}: 'images' must be u8[N, H, W, 3], got {stored.dtype}"
                       f"{list(stored.shape)}")
    names = [f"{path}[{i}]" for i in range(len(stored))]
    read = lambda i: stored[i]
    digest = hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()[:16]
  elif path.endswith((".tar", ".tar.gz", ".tgz")):
    names, read, digest = _tar(path)
  else:
    raise ValueError(f"images:{path} is neither a folder nor an .npz or .tar file")
  if not names:
    raise ValueError(f"images:{path} holds no images")
  first = read(0)
  if first.shape[0] != first.shape[1]:
    raise ValueError(f"{names[0]}: images must be square, got {first.shape[:2]}")

  def sample(indices: np.ndarray, mesh: Mesh):
    del mesh  # Decoded on the host; the embedder shards them.
    beyond = [int(i) for i in indices if not 0 <= i < len(names)]
    if beyond:
      raise ValueError(f"images:{path} holds {len(names)} images; sample {beyond[0]} asked")
    images = [read(int(i)) for i in indices]
    odd = next((names[int(i)] for i, image in zip(indices, images)
                if image.shape != first.shape), None)
    if odd is not None:
      raise ValueError(f"{odd}: every image of a source must be {first.shape[:2]}, this one is "
                       f"{read(names.index(odd)).shape[:2]}")
    return jnp.asarray(np.stack(images), jnp.float32) / 127.5 - 1.0

  return Source(f"images:{path}", "images", first.shape[0], sample, len(names), frozenset(),
                {"kind": "images", "count": len(names), "sha256": digest})


def _digest_files(names: list[str]) -> str:
  digest = hashlib.sha256()
  for name in names:
    digest.update(os.path.basename(name).encode())
    with open(name, "rb") as handle:
      digest.update(hashlib.sha256(handle.read()).digest())
  return digest.hexdigest()[:16]


def _tar(path: str):
  """(names, read(i), digest) of the image members of a tar file, in sorted name order."""
  with tarfile.open(path) as archive:
    members = sorted((m for m in archive.getmembers()
                      if m.isfile() and photos.is_photo_name(os.path.basename(m.name))),
                     key=lambda m: m.name)
    blobs = [archive.extractfile(m).read() for m in members]
  digest = hashlib.sha256()
  for member, blob in zip(members, blobs):
    digest.update(member.name.encode())
    digest.update(hashlib.sha256(blob).digest())
  names = [f"{path}:{m.name}" for m in members]
  return names, lambda i: photos.decode_bytes(blobs[i], names[i]), digest.hexdigest()[:16]
