"""The embedded default data set: procedurally rendered faces with identity labels.

Needs nothing from the network. Each identity is a fixed set of facial traits; each of its
photos varies pose, expression, lighting, background, clothing, blur and sensor noise
(see `faces_render`). Identity i's traits depend only on (seed, i), so adding identities leaves
the existing ones unchanged; the same config always gives the same bytes.

Identity survives the nuisance but is not trivially readable from raw pixels: pixel-space
1-nearest-neighbour identification (squared L2 on raw pixels, each photo against every other
photo) is 2.9% accurate at 64 px with 1,000 identities x 20 photos (chance: 0.1%), and 2.4% at
32 px: backgrounds, lighting and pose dominate raw pixel distances. A face encoder is expected to
do far better (`gmia.face_encoder.evaluation` measures both).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from gmia.data import faces_render, tfds_io

RESOLUTIONS = (32, 64, 128)
_RENDER_CHUNK = 500


@dataclasses.dataclass(kw_only=True)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """Resolution, number of identities, photos per identity and seed of a synthetic set."""

  resolution: int = 64
  identities: int = 1000
  photos: int = 20
  seed: int = 0


def synthetic_config(resolution: int = 64, identities: int = 1000, photos: int = 20,
                     seed: int = 0) -> SyntheticFacesConfig:
  """A config for any size; its name encodes every field so prepared sets never collide."""
  if resolution not in RESOLUTIONS:
    raise ValueError(f"synthetic_faces resolution must be one of {RESOLUTIONS}, got {resolution}")
  if identities < 1 or photos < 1:
    raise ValueError(f"need at least one identity and one photo, got {identities} x {photos}")
  return SyntheticFacesConfig(
      name=f"r{resolution}_i{identities}_p{photos}_s{seed}", resolution=resolution,
      identities=identities, photos=photos, seed=seed,
      description=f"{identities} identities x {photos} photos at {resolution} px, seed {seed}")


def render_identities(identities: np.ndarray, photos: int, resolution: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Renders `photos` photos of each identity -> (u8[I*P, R, R, 3], identity, photo_id)."""
  traits, nuisance = [], []
  for identity in identities:
    traits.append(faces_render.sample_identities(np.random.default_rng([seed, identity, 0]), 1))
    nuisance.append(faces_render.sample_nuisance(np.random.default_rng([seed, identity, 1]),
                                                 photos))
  traits = {k: np.repeat(np.concatenate([t[k] for t in traits]), photos, axis=0)
            for k in traits[0]}
  nuisance = {k: np.concatenate([p[k] for p in nuisance]) for k in nuisance[0]}
  n = len(identities) * photos
  images = np.empty((n, resolution, resolution, 3), np.uint8)
  for start in range(0, n, _RENDER_CHUNK):
    # Fixed-size chunks (the last one padded by wrapping) compile the renderer once.
    rows = np.arange(start, start + _RENDER_CHUNK) % n
    chunk = faces_render.render({k: v[rows] for k, v in traits.items()},
                                {k: v[rows] for k, v in nuisance.items()}, resolution)
    images[start:start + _RENDER_CHUNK] = chunk[:min(_RENDER_CHUNK, n - start)]
  identity = np.repeat(np.asarray(identities, np.int64), photos)
  photo_id = identity * photos + np.tile(np.arange(photos, dtype=np.int64), len(identities))
  return images, identity, photo_id


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
  """Procedural faces: {"image": u8[R,R,3], "identity": i64, "photo_id": i64}."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [synthetic_config(r) for r in RESOLUTIONS]
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[1].name

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds_io.face_features(self.builder_config.resolution),
        supervised_keys=("image", "identity"))

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is rendered locally.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config
    images, identity, photo_id = render_identities(
        np.arange(config.identities), config.photos, config.resolution, config.seed)
    for image, ident, pid in zip(images, identity, photo_id):
      yield int(pid), {"image": image, "identity": ident, "photo_id": pid}


def make_builder(data_dir: str, *, resolution: int = 64, identities: int = 1000, photos: int = 20,
                 seed: int = 0) -> SyntheticFaces:
  """The builder for one synthetic config, stored under `data_dir`."""
  config = synthetic_config(resolution, identities, photos, seed)
  # tfds refuses a custom config that shares its name with a predefined one: pass the name then.
  predefined = {c.name for c in SyntheticFaces.BUILDER_CONFIGS}
  return SyntheticFaces(data_dir=data_dir, config=config.name if config.name in predefined else config)
