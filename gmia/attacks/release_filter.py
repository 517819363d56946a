"""Release filter: drop generated samples that come too close to a training identity.

The model owner's defence with the attack's own machinery: every sample is compared with every
training photo of every member; a sample whose best match exceeds the threshold (by default the
encoder's verification threshold at a chosen false-accept rate, measured on impostor pairs of the
training photos) is held back.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from gmia import files, kernels, viz
from gmia.attacks import identity_membership as im
from gmia.attacks import generate_embed, membership_job, report
from gmia.face_encoder import evaluation
from gmia.progress import Progress

REPORT_FILE = "filter.json"


def default_config() -> ml_collections.ConfigDict:
  config = membership_job.default_config()
  config.threshold = -1.0        # Cosine similarity; < 0: set from false_accept_rate.
  config.num_samples = 2_000
  return config


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Generates, filters and writes `kept.npz` (u8 images + sample ids), figures and a report."""
  target = membership_job.load_target(config)
  training = target.arrays.select(target.split.train_photos("members"))
  embeddings = evaluation.embed_images(target.encoder.model, target.encoder.variables,
                                       training.images, target.mesh)
  threshold = config.threshold
  if threshold < 0:
    threshold = im.impostor_threshold(embeddings, training.identity, config.false_accept_rate,
                                      seed=config.seed)
  chunks = membership_job.num_chunks(config)
  progress = Progress(chunks, every_steps=max(1, chunks // 20), items_name="samples",
                      items_per_step=config.chunk_size)
  kept_images, kept_ids, dropped_ids, dropped_sim, dropped_photo = [], [], [], [], []
  for chunk in range(chunks):
    images, sample_embeddings = target.chunk_fn(chunk)
    similarity, nearest = kernels.top_k(sample_embeddings, embeddings, 1)
    similarity, nearest = np.asarray(similarity)[:, 0], np.asarray(nearest)[:, 0]
    ids = chunk * config.chunk_size + np.arange(len(images))
    drop = similarity > threshold
    kept_images.append(viz.to_uint8(images[~drop]))
    kept_ids.append(ids[~drop])
    dropped_ids.append(ids[drop])
    dropped_sim.append(similarity[drop])
    dropped_photo.append(nearest[drop])
    progress.update(chunk + 1, {"dropped": float(sum(len(d) for d in dropped_ids))})
  progress.close()
  kept_ids, dropped_ids = np.concatenate(kept_ids), np.concatenate(dropped_ids)
  dropped_sim, dropped_photo = np.concatenate(dropped_sim), np.concatenate(dropped_photo)
  files.save_npz(os.path.join(workdir, "kept.npz"),
                 {"images": np.concatenate(kept_images), "sample": kept_ids})
  if len(dropped_ids):
    worst = np.argsort(-dropped_sim, kind="stable")[:8]
    images, _ = generate_embed.samples_by_index(target.chunk_fn, config.chunk_size,
                                                              dropped_ids[worst])
    report.save_matches(os.path.join(workdir, "dropped.png"), images,
                        training.images[dropped_photo[worst]][:, None],
                        [f"sample {s}" for s in dropped_ids[worst]],
                        [[f"id {training.identity[p]} {v:.2f}"]
                         for p, v in zip(dropped_photo[worst], dropped_sim[worst])])
  per_identity = np.unique(training.identity[dropped_photo], return_counts=True)
  result = {
      "num_samples": int(len(kept_ids) + len(dropped_ids)), "kept": int(len(kept_ids)),
      "dropped": int(len(dropped_ids)), "threshold": float(threshold),
      "dropped_per_identity": {int(i): int(c) for i, c in zip(*per_identity)},
      "config": config.to_dict(),
  }
  files.write_json(os.path.join(workdir, REPORT_FILE), result)
  return result
