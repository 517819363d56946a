"""Samples handed out as images (services, diffusion models): a folder, an .npz or a .tar.

Black box: no latents, no gradients. Sample i is the i-th image (files in sorted name order;
the .npz array `images`, u8[N, H, W, 3]); all must have one square size. The fingerprint hashes
every image's bytes, so another folder under the same path is another source.

Archives are read as untrusted files, one image at a time and never extracted: an .npz's header
is checked (shape, dtype, the bytes it holds) before any image is read; a .tar with a member that
is a link, a device, or a path that is absolute or climbs out with `..` is refused, as is an
image member larger than MAX_MEMBER_BYTES; members that are not images are ignored. Both are read
once through when opened (the fingerprint), so a truncated or corrupt archive is named at once.
"""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia.cli import one_line
from gmia.data import photos
from gmia.sources.base import Source

# An image file of a .tar larger than this is refused before it is read (a 8192 x 8192 PNG of
# noise is 200 MB).
MAX_MEMBER_BYTES = 1 << 28
_BLOCK = 1 << 20  # Bytes hashed at a time.
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
                   EOFError, ValueError, OSError)

Reader = Callable[[int], np.ndarray]


def open_images(path: str) -> Source:
  """The images at `path` (a folder, .npz or .tar) as a source."""
  if os.path.isdir(path):
    names = photos.files_in(path)
    read = lambda i: photos.decode(names[i])
    digest = _digest_files(names)
  elif path.endswith((".npz", ".tar", ".tar.gz", ".tgz")):
    if not os.path.isfile(path):
      raise ValueError(f"images:{path}: no such file")
    opener = _npz if path.endswith(".npz") else _tar
    try:
      names, read, digest = opener(path)
    except MemoryError:
      raise ValueError(f"images:{path}: asks for more memory than there is") from None
    except _ARCHIVE_ERRORS as error:
      if str(error).startswith(f"images:{path}"):
        raise
      kind = "an .npz" if path.endswith(".npz") else "a .tar"
      raise ValueError(f"images:{path}: not {kind} file gmia can read "
                       f"({one_line(error, True)})") from None
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


def _npz(path: str) -> tuple[list[str], Reader, str]:
  """(names, read(i), digest) of the array `images` u8[N, H, W, 3] of an .npz, image i read
  from the archive when asked (a compressed member is read on from the last image read)."""
  archive = zipfile.ZipFile(path)
  try:
    return _npz_images(path, archive)
  except BaseException:
    archive.close()
    raise


def _npz_images(path: str, archive: zipfile.ZipFile) -> tuple[list[str], Reader, str]:
  arrays = [name[:-len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
  if "images" not in arrays:
    raise ValueError(f"images:{path} has no array 'images' (it has {arrays})")
  stream = archive.open("images.npy")
  version = np.lib.format.read_magic(stream)
  header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
  shape, fortran, dtype = header(stream)
  if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8 or fortran:
    raise ValueError(f"images:{path}: 'images' must be u8[N, H, W, 3] in C order, got {dtype}"
                     f"{list(shape)}{' in Fortran order' if fortran else ''}")
  start, size = stream.tell(), math.prod(shape[1:])
  held = archive.getinfo("images.npy").file_size - start
  if held < shape[0] * size:
    raise ValueError(f"images:{path}: 'images' declares {shape[0]} images of {shape[1]}x"
                     f"{shape[2]} ({shape[0] * size} bytes), the archive holds {held} bytes")
  digest = hashlib.sha256()
  for _ in range(0, shape[0] * size, _BLOCK):
    digest.update(stream.read(min(_BLOCK, start + shape[0] * size - stream.tell())))

  def read(i: int) -> np.ndarray:
    stream.seek(start + i * size)
    return np.frombuffer(stream.read(size), np.uint8).reshape(shape[1:])

  return [f"{path}[{i}]" for i in range(shape[0])], read, digest.hexdigest()[:16]


def _tar(path: str) -> tuple[list[str], Reader, str]:
  """(names, read(i), digest) of the image members of a tar file, in sorted name order; members
  read when asked."""
  archive = tarfile.open(path)
  try:
    return _tar_images(path, archive)
  except BaseException:
    archive.close()
    raise


def _tar_images(path: str, archive: tarfile.TarFile) -> tuple[list[str], Reader, str]:
  members = []
  for member in archive.getmembers():
    parts = member.name.replace("\\", "/").split("/")
    if member.name.startswith(("/", "\\")) or ".." in parts:
      raise ValueError(f"images:{path}: member {member.name!r} is a path outside the archive's "
                       "folder; refusing the archive")
    if member.issym() or member.islnk():
      raise ValueError(f"images:{path}: member {member.name!r} is a link (to "
                       f"{member.linkname!r}); refusing the archive")
    if not (member.isfile() or member.isdir()):
      raise ValueError(f"images:{path}: member {member.name!r} is not a file or a folder (a "
                       "device or a pipe); refusing the archive")
    if member.isfile() and photos.is_photo_name(os.path.basename(member.name)):
      if member.size > MAX_MEMBER_BYTES:
        raise ValueError(f"images:{path}: member {member.name!r} has {member.size} bytes, more "
                         f"than an image gmia reads ({MAX_MEMBER_BYTES})")
      members.append(member)
  members.sort(key=lambda m: m.name)
  digest = hashlib.sha256()
  for member in members:
    digest.update(member.name.encode())
    digest.update(hashlib.sha256(archive.extractfile(member).read()).digest())
  names = [f"{path}:{m.name}" for m in members]

  def read(i: int) -> np.ndarray:
    return photos.decode_bytes(archive.extractfile(members[i]).read(), names[i])

  return names, read, digest.hexdigest()[:16]
