"""Sample-level membership attacks on generators by reconstruction (GAN-Leaks, Chen et al. 2020).

A photo the generator was trained on is reconstructed better than one it never saw:
- full black-box: Euclidean distance from the photo to the nearest of N generated samples
  (pixels in [-1, 1], through the kernels' streamed top-k);
- white-box: Euclidean residual of the photo's gradient-based projection into the generator
  (gmia.inversion.latent);
- calibrated: either distance minus the same distance measured on a reference generator trained
  on other data, which removes how easy a photo is to reconstruct in general.
Score = minus the (calibrated) distance: members score higher. The generators come from any
source (gmia.sources); the white-box attack needs a StyleGAN2 one (gmia: or stylegan2_pkl:).
Members' and non-members' photos come from a gmia run's split (its members' training photos) or
from folders (members_dir: photos the generator was trained on; population_dir: others).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmia import files, fingerprint, kernels, metrics, parallel, sources, viz
from gmia.attacks import people
from gmia.jobs import page_builders, page_parts
from gmia.jobs.inputs import check_inputs
from gmia.data import folders, photos as photo_files
from gmia.inversion import latent, latent_encoder_training
from gmia.workdir import exclusive

REPORT_FILE = "report.json"


def nearest_sample_distance(queries: jax.Array, samples: jax.Array, *,
                            chunk_size: int = 256) -> jax.Array:
  """f32[Q]: Euclidean distance from each query image f32[Q, H, W, 3] to its nearest sample
  f32[N, H, W, 3] (same pixel scale)."""
  if queries.ndim != 4 or queries.shape[1:] != samples.shape[1:]:
    raise ValueError(f"queries {queries.shape} and samples {samples.shape} must be images "
                     "[N, H, W, C] of one size")
  flat = lambda x: jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  squared, _ = kernels.top_k(flat(queries), flat(samples), 1, metric="sqeuclidean",
                             chunk_size=min(chunk_size, queries.shape[0]))
  return jnp.sqrt(jnp.maximum(squared[:, 0], 0.0))


def projection_residual(pixel_mse: jax.Array, image_shape: tuple[int, ...]) -> jax.Array:
  """Euclidean residual f32[Q] ||G(w) - x|| from the projection's per-pixel MSE f32[Q], in the
  unit of `nearest_sample_distance`."""
  return jnp.sqrt(pixel_mse * float(np.prod(image_shape)))


def membership_scores(distances: jax.Array,
                      reference_distances: jax.Array | None = None) -> np.ndarray:
  """float64[Q] scores, higher for members: -distance, or -(distance - reference distance)."""
  distances = np.asarray(distances, np.float64)
  if reference_distances is None:
    return -distances
  reference_distances = np.asarray(reference_distances, np.float64)
  if reference_distances.shape != distances.shape:
    raise ValueError(f"reference distances {reference_distances.shape} and distances "
                     f"{distances.shape} differ in shape")
  return reference_distances - distances


def residual_images(targets: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """|target - reconstruction| shown on [-1, 1] (black: exact), f32[N, H, W, 3]."""
  return np.abs(np.asarray(targets) - np.asarray(reconstructions)) - 1.0


def save_reconstruction_grid(path: str, targets: np.ndarray, reconstructions: np.ndarray,
                             captions: list[str]) -> None:
  """PNG rows of target | reconstruction | residual, f32[N, H, W, 3] in [-1, 1]."""
  rows = np.stack([np.asarray(targets), np.asarray(reconstructions),
                   residual_images(targets, reconstructions)], axis=1)
  labels = [f"{c} {kind}" for c in captions for kind in ("target", "recon", "residual")]
  viz.save_grid(path, rows.reshape(-1, *rows.shape[2:]), ncols=3, labels=labels,
                upscale=max(1, 96 // rows.shape[2]))


def default_config() -> ml_collections.ConfigDict:
  """Every option of the reconstruction attack; attack/configs/reconstruction.py returns it."""
  return ml_collections.ConfigDict({
      **sources.config_fields(),          # The target generator (required).
      "reference_generator": "",          # Trained on other data: calibrated scores when set.
      "latent_encoder_workdir": "",       # Projections start at its guess instead of w_avg.
      "reference_latent_encoder_workdir": "",  # The same for the reference generator.
      "split_path": "",                   # Default: the gmia generator's split.json; or:
      "members_dir": "",                  # photos the generator was trained on, and
      "population_dir": "",               # photos it was not (any layout of image files).
      "num_targets": 32,                  # Photos of members, and as many non-members.
      "num_samples": 2000,                # Generated samples of the black-box attack.
      "batch_size": 8,                    # Targets projected per compiled call.
      "projection": {
          "num_steps": 500, "w_plus": False, "noise_mode": "const",
          "initial_learning_rate": 0.1, "regularize_noise_weight": 1e5, "w_avg_samples": 10000,
          "initial_noise_factor": 0.05,  # 0 suits a latent encoder start (bench_latent_encoder).
      },
      "grid_rows": 8,
      "report_photos": True,              # report.html shows the faces; False: fingerprints.
      "overwrite": False,                 # Start over when the workdir holds other inputs' results.
  })


def _photos(config: ml_collections.ConfigDict, source: sources.Source
            ) -> tuple[np.ndarray, np.ndarray]:
  """(f32[2n, R, R, 3] in [-1, 1] at the generator's resolution, bool[2n] member labels):
  photos of members and of non-members, n = min(num_targets, available), chosen with seed."""
  rng = np.random.default_rng(config.seed)
  if config.members_dir or config.population_dir:
    if not (config.members_dir and config.population_dir):
      raise ValueError("give both members_dir and population_dir (photos in and out of the "
                       "generator's training data)")
    groups = [_folder_photos(folder, source.resolution)
              for folder in (config.members_dir, config.population_dir)]
  else:
    split, arrays = people.load_split(config, source, "members_dir and population_dir")
    groups = [arrays.select(ids).images for ids in (
        split.train_photos("members"), np.concatenate([split.train_photos("non_members"),
                                                       split.reference_photos("non_members")]))]
  n = min(config.num_targets, *(len(g) for g in groups))
  if n == 0:
    raise ValueError("there are no member or no non-member photos to attack")
  chosen = [g[np.sort(rng.choice(len(g), n, replace=False))] for g in groups]
  images = np.concatenate(chosen).astype(np.float32) / 127.5 - 1.0
  return images, np.arange(2 * n) < n


def _folder_photos(folder: str, resolution: int) -> np.ndarray:
  """u8[N, R, R, 3]: every readable photo under `folder` (recursively), centre square, resized."""
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                 if photo_files.is_photo_name(name))
  read = photo_files.Reader().read(
      paths, prepare=lambda image: folders.fit_photo(image, resolution, None))
  if not read.images:
    raise ValueError(f"no readable photos in {folder}: {read.summary()}")
  return np.stack(read.images)


def _distances(source: sources.Source, latent_encoder_workdir: str, config,
               targets: np.ndarray) -> dict[str, np.ndarray]:
  """Black-box and white-box distances of `targets` to one generator, plus reconstructions;
  the projections start at the latent encoder's guess when a workdir is given."""
  sources.require(source, sources.STYLEGAN, "the white-box reconstruction attack")
  generator, g_vars = source.stylegan
  mesh = parallel.make_mesh()
  samples = np.concatenate([np.asarray(source.sample(np.arange(i, min(i + 500, config.num_samples)),
                                                     mesh))
                            for i in range(0, config.num_samples, 500)])
  black_box = np.asarray(nearest_sample_distance(jnp.asarray(targets), jnp.asarray(samples)))
  project = latent.make_projector(generator, latent.ProjectionSettings(**config.projection))
  batch = config.batch_size
  pad = -len(targets) % batch
  padded = np.concatenate([targets, np.zeros((pad,) + targets.shape[1:], targets.dtype)])
  keys = latent.target_keys(config.seed, np.arange(len(padded)))
  start = (latent_encoder_training.encoder_start(latent_encoder_workdir, generator)
           if latent_encoder_workdir else lambda _: None)
  chunks = [jnp.asarray(padded[i:i + batch]) for i in range(0, len(padded), batch)]
  outs = [project(g_vars, None, x, keys[n * batch:(n + 1) * batch], start(x))
          for n, x in enumerate(chunks)]
  mse = np.concatenate([np.asarray(o["pixel_mse"]) for o in outs])[:len(targets)]
  images = np.concatenate([np.asarray(o["images"]) for o in outs])[:len(targets)]
  return {"black_box": black_box,
          "white_box": np.asarray(projection_residual(mse, targets.shape[1:])),
          "reconstructions": images}


@exclusive
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the black-box, white-box (and calibrated) attacks; writes report.json, scores.csv,
  roc.png, reconstructions.png (target | reconstruction | residual) and report.html into
  `workdir`."""
  if config.reference_generator and (
      bool(config.latent_encoder_workdir) != bool(config.reference_latent_encoder_workdir)):
    raise ValueError("calibrated scores need both projections started alike: set "
                     "latent_encoder_workdir and reference_latent_encoder_workdir, or neither")
  started = time.perf_counter()
  source = sources.open_source(config)
  reference = None
  if config.reference_generator:
    reference = sources.open_source(ml_collections.ConfigDict(
        {**config.to_dict(), "generator": config.reference_generator}))
  targets, labels = _photos(config, source)
  os.makedirs(workdir, exist_ok=True)
  check_inputs(workdir, {"generator": source.fingerprint,
                         "reference": None if reference is None else reference.fingerprint,
                         "targets": fingerprint.tree_digest(targets),
                         "settings": {k: config[k] for k in ("seed", "num_samples", "batch_size",
                                                             "latent_encoder_workdir",
                                                             "reference_latent_encoder_workdir")},
                         "projection": config.projection.to_dict()},
               overwrite=config.overwrite, outputs=(REPORT_FILE, "scores.csv", "roc.png",
                                                    "reconstructions.png",
                                                    page_parts.PAGE_FILE))
  found = _distances(source, config.latent_encoder_workdir, config, targets)
  reference = (_distances(reference, config.reference_latent_encoder_workdir, config, targets)
               if reference is not None else None)
  scores = {}
  for attack in ("black_box", "white_box"):
    scores[attack] = membership_scores(found[attack])
    if reference is not None:
      scores[f"{attack}_calibrated"] = membership_scores(found[attack], reference[attack])
  summary = {"attacks": {name: metrics.membership_report(s, labels, seed=config.seed)
                         for name, s in scores.items()},
             "config": config.to_dict(), "seconds": time.perf_counter() - started}
  files.write_csv(os.path.join(workdir, "scores.csv"),
                          {"member": labels.astype(int), **scores})
  viz.plot_roc(os.path.join(workdir, "roc.png"), {n: (s, labels) for n, s in scores.items()},
                  "Reconstruction attacks (GAN-Leaks)")
  rows = np.argsort(-scores["white_box"])[:config.grid_rows]
  save_reconstruction_grid(os.path.join(workdir, "reconstructions.png"), targets[rows],
                           found["reconstructions"][rows],
                           ["member" if labels[i] else "non-member" for i in rows])
  summary.update(page_builders.reconstruction_extras(summary))
  summary["provenance"] = page_parts.provenance(workdir, config, summary["seconds"])
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  page_parts.write_page(workdir, page_builders.reconstruction_page, summary,
                           config.report_photos)
  return summary
