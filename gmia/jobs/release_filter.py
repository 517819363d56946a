"""Release filter: drop generated samples that come too close to a training identity.

The model owner's defence with the attack's own machinery: every sample is compared with every
training photo of every person the generator was trained on (a gmia run's members, or identity
folders `training_dir`); a sample whose best match exceeds the threshold (by default the
matcher's verification threshold at a chosen false-accept rate, measured on impostor pairs of
the training photos) is held back.
"""

from __future__ import annotations

import os
import time

import ml_collections
import numpy as np

from gmia import files, fingerprint, kernels, viz
from gmia.attacks import identity_membership as im
from gmia.attacks import people as people_lib
from gmia.jobs import membership, page_builders, page_parts
from gmia.jobs.inputs import check_inputs
from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.faces.embedder import embed_photos
from gmia.progress import Progress
from gmia.workdir import exclusive

REPORT_FILE = "filter.json"


def default_config() -> ml_collections.ConfigDict:
  config = membership.default_config()
  config.threshold = -1.0        # Cosine similarity; < 0: set from false_accept_rate.
  config.num_samples = 2_000
  config.training_dir = ""       # Identity folders of the training people; default: the gmia
                                 # generator's members (their training photos).
  return config


def training_people(config: ml_collections.ConfigDict, source, embedder, mesh
                    ) -> people_lib.People:
  """Every training photo of every person the generator was trained on (group "member")."""
  if config.training_dir:
    return people_lib.folder_people({config.training_dir: "member"}, embedder, mesh)
  split_path = config.split_path or source.split_path
  if not split_path or source.data is None:
    raise ValueError(f"{source.spec} comes with no identity split: give training_dir, identity "
                     "folders of the people it was trained on")
  split = IdentitySplit.load(split_path)
  training = run_data.load_dataset(source.data).select(split.train_photos("members"))
  labels = [f"photo {i}" for i in training.photo_id.tolist()]
  embedded = embed_photos(embedder, list(training.images), labels, mesh)
  refs = im.make_references(embedded.embeddings, training.identity[embedded.kept],
                            training.photo_id[embedded.kept],
                            {str(i): "member" for i in split.identities("members").tolist()})
  return people_lib.People(refs, embedded.crops, [labels[i] for i in embedded.kept],
                           embedded.skipped, {"photos": fingerprint.tree_digest(training.images)})


@exclusive
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Generates, filters and writes `kept.npz` (u8 images + sample ids), figures and a report."""
  started = time.perf_counter()
  job = membership.setup(config, training_people)
  os.makedirs(workdir, exist_ok=True)
  check_inputs(workdir, {**membership.attack_inputs(config, job),
                         "threshold": config.threshold},
               overwrite=config.overwrite, outputs=("kept.npz", "dropped.png", REPORT_FILE,
                                                    page_parts.PAGE_FILE))
  refs = job.people.refs
  threshold = config.threshold
  if threshold < 0:
    threshold = im.impostor_threshold(refs.embeddings, refs.identity, config.false_accept_rate,
                                      seed=config.seed)
  progress = Progress(config.num_samples, every_steps=max(1, config.num_samples // 20),
                      items_name="samples")
  kept_images, kept_ids, dropped_ids, dropped_sim, dropped_photo = [], [], [], [], []
  for begin in range(0, config.num_samples, job.chunk_size):
    indices = np.arange(begin, min(begin + job.chunk_size, config.num_samples))
    ids, sample_embeddings, images = job.samples.with_images(indices)
    similarity, nearest = kernels.top_k(sample_embeddings, refs.embeddings, 1)
    similarity, nearest = np.asarray(similarity)[:, 0], np.asarray(nearest)[:, 0]
    drop = similarity > threshold
    kept_images.append(images[~drop])
    kept_ids.append(ids[~drop])
    dropped_ids.append(ids[drop])
    dropped_sim.append(similarity[drop])
    dropped_photo.append(nearest[drop])
    progress.update(int(indices[-1] + 1), {"dropped": float(sum(len(d) for d in dropped_ids))})
  progress.close()
  kept_ids, dropped_ids = np.concatenate(kept_ids), np.concatenate(dropped_ids)
  dropped_sim, dropped_photo = np.concatenate(dropped_sim), np.concatenate(dropped_photo)
  files.save_npz(os.path.join(workdir, "kept.npz"),
                 {"images": np.concatenate(kept_images), "sample": kept_ids})
  person = refs.names[refs.identity]
  if len(dropped_ids):
    worst = np.argsort(-dropped_sim, kind="stable")[:8]
    viz.save_matches(os.path.join(workdir, "dropped.png"),
                        job.samples.images(dropped_ids[worst]),
                        job.people.crops[dropped_photo[worst]][:, None],
                        [f"sample {s}" for s in dropped_ids[worst]],
                        [[f"{person[p]} {v:.2f}"]
                         for p, v in zip(dropped_photo[worst], dropped_sim[worst])])
  per_identity = np.unique(person[dropped_photo], return_counts=True)
  result = {
      "num_samples": int(config.num_samples), "kept": int(len(kept_ids)),
      "dropped": int(len(dropped_ids)),
      "samples_without_face": int(config.num_samples - len(kept_ids) - len(dropped_ids)),
      "threshold": float(threshold),
      "dropped_per_identity": {str(i): int(c) for i, c in zip(*per_identity)},
      "config": config.to_dict(),
  }
  result.update(page_builders.release_filter_extras(result))
  result["provenance"] = page_parts.provenance(workdir, config, time.perf_counter() - started)
  files.write_json(os.path.join(workdir, REPORT_FILE), result)
  page_parts.write_page(workdir, page_builders.release_filter_page, result,
                           config.report_photos)
  return result
