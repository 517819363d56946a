"""The identity membership attack as a job: checkpoints in, report files out.

generator workdir (checkpoint + split.json) + encoder (workdir or insightface ONNX)
  -> reference embeddings of members' and non-members' reference photos
  -> N generated samples, embedded and reduced chunk by chunk (resumable)
  -> report.json, scores.csv, samples.csv, roc.png, matches.png in the attack workdir.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from absl import logging

import gmia
from gmia import files, kernels, metrics, parallel
from gmia.attacks import generate_embed, report
from gmia.attacks import identity_membership as im
from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.face_encoder import evaluation, trainer as encoder_trainer
from gmia.gan import sampling
from gmia.models import import_insightface, iresnet
from gmia.progress import Progress

REPORT_FILE = "report.json"


def default_config() -> ml_collections.ConfigDict:
  """Every option of the attack; attack/configs/identity_membership.py returns this."""
  return ml_collections.ConfigDict({
      "generator_workdir": "",   # Training workdir of the target generator (required).
      "encoder_workdir": "",     # Workdir of train/train_face_encoder.py, or:
      "encoder_onnx": "",        # an insightface ONNX file (e.g. w600k_r50.onnx) ...
      "encoder_arch": "r50",     # ... and its architecture.
      "split_path": "",          # Default: the generator workdir's split.json.
      "num_samples": 10_000,
      "chunk_size": 500,         # Samples generated, embedded and reduced per step.
      "truncation_psi": 1.0,
      "seed": 0,
      "score": "best",           # Primary variant: best | topk_mean | count.
      "topk": 10,                # k of topk_mean.
      "false_accept_rate": 1e-2,  # Sets the verification threshold of the count variant.
      "bootstrap_resamples": 1000,
      "matches_rows": 8,
      "title": "",
  })


@dataclasses.dataclass(frozen=True)
class Encoder:
  model: iresnet.IResNet
  variables: Any


def load_encoder(config: ml_collections.ConfigDict) -> Encoder:
  """The encoder from a training workdir or an insightface ONNX file."""
  if bool(config.encoder_workdir) == bool(config.encoder_onnx):
    raise ValueError("give exactly one of encoder_workdir and encoder_onnx")
  if config.encoder_workdir:
    return Encoder(*encoder_trainer.load_encoder(config.encoder_workdir))
  model = iresnet.iresnet(config.encoder_arch)
  return Encoder(model, import_insightface.load_onnx(config.encoder_onnx, model))


def reference_set(arrays, split: IdentitySplit, encoder: Encoder, mesh) -> tuple[im.References,
                                                                                  np.ndarray]:
  """Embeds the reference photos of members and non-members -> (References, their images)."""
  photo_ids = np.concatenate([split.reference_photos("members"),
                              split.reference_photos("non_members")])
  photos = arrays.select(photo_ids)
  embeddings = evaluation.embed_images(encoder.model, encoder.variables, photos.images, mesh)
  refs = im.make_references(embeddings, photos.identity, photos.photo_id,
                            split.identities("members"), split.identities("non_members"))
  return refs, photos.images


@dataclasses.dataclass(frozen=True)
class Target:
  """A trained generator with its data, split and an encoder: what every job here starts from.

  chunk_fn(c) -> (images, unit embeddings) of sample chunk c (see generate_embed).
  """

  split: IdentitySplit
  arrays: Any
  encoder: Encoder
  chunk_fn: Any
  mesh: Any


def load_target(config: ml_collections.ConfigDict) -> Target:
  """Loads the generator, its split and data set, and the encoder named by `config`."""
  if not config.generator_workdir:
    raise ValueError("config.generator_workdir is required: the workdir of the target generator")
  mesh = parallel.make_mesh()
  generator, g_vars, g_config = sampling.load_generator(config.generator_workdir)
  split = IdentitySplit.load(config.split_path or os.path.join(config.generator_workdir,
                                                               run_data.SPLIT_FILE))
  arrays = run_data.load_dataset(g_config.data)
  encoder = load_encoder(config)
  chunk_fn = generate_embed.make_generate_embed(
      generator, g_vars, encoder.model, encoder.variables, seed=config.seed,
      chunk_size=config.chunk_size, mesh=mesh, truncation_psi=config.truncation_psi)
  return Target(split, arrays, encoder, chunk_fn, mesh)


def num_chunks(config: ml_collections.ConfigDict) -> int:
  """Chunks that cover num_samples (the last chunk is generated whole)."""
  if config.num_samples <= 0 or config.chunk_size <= 0:
    raise ValueError(f"num_samples and chunk_size must be positive, got {config.num_samples} and "
                     f"{config.chunk_size}")
  return -(-config.num_samples // config.chunk_size)


def stream_evidence(config: ml_collections.ConfigDict, target: Target, refs: im.References,
                    threshold: float, state_dir: str) -> tuple[im.Evidence, im.SampleView]:
  """Streams the generator's samples against `refs` with progress; resumable in `state_dir`."""
  chunks = num_chunks(config)
  progress = Progress(chunks, workdir=None, every_steps=max(1, chunks // 20),
                      items_name="samples", items_per_step=config.chunk_size)
  fingerprint = {k: config[k] for k in ("generator_workdir", "encoder_workdir", "encoder_onnx",
                                        "seed", "chunk_size", "truncation_psi", "topk",
                                        "false_accept_rate")}
  fingerprint["references"] = refs.photo_id.tolist()
  result = im.stream(lambda c: target.chunk_fn(c)[1], chunks, refs, threshold=threshold,
                     k=config.topk, state_dir=state_dir, fingerprint=fingerprint,
                     on_chunk=lambda done, _: progress.update(done, {}), mesh=target.mesh)
  progress.close()
  return result


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the attack and writes its report files into `workdir`."""
  if config.score not in im.VARIANTS:
    raise ValueError(f"unknown score variant {config.score!r}; variants: {im.VARIANTS}")
  if config.num_samples < max(config.topk, 1):
    raise ValueError(f"num_samples ({config.num_samples}) must be at least topk ({config.topk})")
  started = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  target = load_target(config)
  refs, ref_images = reference_set(target.arrays, target.split, target.encoder, target.mesh)
  threshold = im.impostor_threshold(refs.embeddings, refs.identity, config.false_accept_rate,
                                    seed=config.seed)
  evidence, view = stream_evidence(config, target, refs, threshold, os.path.join(workdir, "state"))
  summary = _write_report(config, workdir, evidence, view, refs, ref_images, threshold,
                          target.chunk_fn)
  summary["seconds"] = time.perf_counter() - started
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  return summary


def _write_report(config, workdir, evidence, view, refs, ref_images, threshold, chunk_fn) -> dict:
  labels = refs.is_member
  variant_scores = {v: im.scores(evidence, v) for v in im.VARIANTS}
  variant_reports = {v: metrics.membership_report(s, labels,
                                                  num_resamples=config.bootstrap_resamples,
                                                  seed=config.seed)
                     for v, s in variant_scores.items()}
  report.write_scores_csv(os.path.join(workdir, "scores.csv"), {
      "identity": refs.target_ids.tolist(),
      "group": ["member" if m else "non_member" for m in labels],
      **{f"score_{v}": np.round(s, 6).tolist() for v, s in variant_scores.items()},
      "best_sample": evidence.best_sample.tolist(),
      "best_photo_id": refs.photo_id[evidence.best_photo].tolist(),
  })
  k = view.identity.shape[1]
  report.write_scores_csv(os.path.join(workdir, "samples.csv"), {
      "sample": list(range(len(view.identity))),
      **{f"identity_{j + 1}": refs.target_ids[view.identity[:, j]].tolist() for j in range(k)},
      **{f"similarity_{j + 1}": np.round(view.similarity[:, j], 5).tolist() for j in range(k)},
  })
  title = config.title or f"identity membership: {os.path.basename(config.generator_workdir)}"
  report.plot_roc(os.path.join(workdir, "roc.png"),
                  {v: (s, labels) for v, s in variant_scores.items()}, title)
  _matches_figure(os.path.join(workdir, "matches.png"), config, view, refs, ref_images, chunk_fn)
  return {
      "config": config.to_dict(),
      "versions": {"gmia": gmia.__version__, "jax": jax.__version__, "flax": flax.__version__},
      "num_samples": int(evidence.num_samples),
      "verification_threshold": threshold,
      "primary": config.score,
      "metrics": variant_reports,
  }


def _matches_figure(path, config, view, refs, ref_images, chunk_fn) -> None:
  """The generated faces closest to any target, each with its three nearest reference photos."""
  rows = min(config.matches_rows, len(view.similarity))
  samples = np.argsort(-view.similarity[:, 0], kind="stable")[:rows]
  images, sample_embeddings = generate_embed.samples_by_index(chunk_fn, config.chunk_size, samples)
  similarity, nearest = kernels.top_k(sample_embeddings, refs.embeddings, 3)
  similarity, nearest = np.asarray(similarity), np.asarray(nearest)
  group = lambda i: "member" if refs.is_member[i] else "non-m."
  captions = [f"sample {s}" for s in samples.tolist()]
  photo_captions = [[f"{refs.target_ids[refs.identity[p]]} {group(refs.identity[p])} {v:.2f}"
                     for p, v in zip(row, values)] for row, values in zip(nearest, similarity)]
  report.save_matches(path, images, ref_images[nearest], captions, photo_captions)


def summary_lines(summary: dict) -> list[str]:
  """Human-readable lines: AUC with its interval and TPR at low FPR, per score variant."""
  lines = []
  for variant, result in summary["metrics"].items():
    low, high = result["auc_interval"]
    tprs = ", ".join(f"TPR@{row['fpr']:g}={row['tpr']:.2f}" + ("" if row["resolved"] else "*")
                     for row in result["tpr_at_fpr"])
    marker = " (primary)" if variant == summary["primary"] else ""
    lines.append(f"{variant:>9}{marker}: AUC {result['auc']:.3f} [{low:.3f}, {high:.3f}]  {tprs}")
  first = next(iter(summary["metrics"].values()))
  lines.append(f"  {first['num_positives']} members vs {first['num_negatives']} non-members, "
               f"{summary['num_samples']} samples; * = FPR not resolved by that many non-members")
  return lines
