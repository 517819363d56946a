"""The identity membership attack as a job: a generator and people in, report files out.

  generator (gmia:, stylegan2_pkl:, onnx: or images:, gmia.sources)
  people: a gmia split, or identity folders of targets / members and a population
  -> reference photos aligned and embedded by the face matcher (gmia.faces.embedder)
  -> num_samples generated samples, aligned and embedded chunk by chunk and reduced to
     per-person evidence (resumable; a larger num_samples extends a finished run)
  -> report.json (every person ranked, with an empirical p-value against the population; with
     known members the ROC, AUC and TPR at low FPR), scores.csv, samples.csv, skipped.csv,
     roc.png (with members), matches.png (each top person beside their nearest samples), and
     with power_samples every variant's AUC at those sample counts too (gmia.attacks.power:
     report.json's "power", power.png), from the same stream.

The workdir records what it was computed from (gmia.jobs.inputs): a rerun with another
generator, matcher, photos, seed or scoring setting is refused, or starts over with overwrite.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import gmia
from gmia import files, metrics, parallel, quality, viz
from gmia.attacks import copies, denoising, power
from gmia.attacks import identity_membership as im
from gmia.attacks import people as people_lib
from gmia.attacks import set_test
from gmia.attacks.samples import DEFAULT_CHUNK, SampleEmbedder, make_sample_embedder
from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.faces import embedder as embedder_lib
from gmia.faces.embedder import embed_photos
from gmia.jobs import page_builders, page_parts
from gmia.jobs.inputs import check_inputs
from gmia.progress import Progress
from gmia.sources import DENOISER, Source, config_fields as source_fields, open_source
from gmia.workdir import exclusive

REPORT_FILE = "report.json"
STATE_VERSION = 2  # What the streamed state holds (2: per-photo best and kernel sums as well).
OUTPUTS = ("state", REPORT_FILE, "scores.csv", "samples.csv", "skipped.csv", "roc.png",
           "matches.png", power.FIGURE_FILE, page_parts.MATCHES_FILE, page_parts.PAGE_FILE)


def default_config() -> ml_collections.ConfigDict:
  """Every option of the attack; attack/configs/membership.py returns this."""
  return ml_collections.ConfigDict({
      **source_fields(),
      **embedder_lib.config_fields(),
      **people_lib.config_fields(),
      "num_samples": 10_000,
      # Also report every variant's AUC after these first samples (multiples of chunk_size):
      # the attack's power against the number of samples, from one stream.
      "power_samples": (),
      "chunk_size": DEFAULT_CHUNK,  # Samples generated, embedded and reduced per step.
      "score": "best",           # Primary variant: best | topk_mean | count.
      "topk": 10,                # k of topk_mean.
      "false_accept_rate": 1e-2,  # Sets the verification threshold of the count variant.
      "bootstrap_resamples": 1000,
      # The first samples, drawn again after the stream: they choose the density variant's
      # bandwidth and measure sample quality (Frechet distance, near-copies of training photos).
      "quality_samples": 1000,
      # Diffusion models (gray box): the denoiser's error on the reference photos at these
      # timesteps (gmia.attacks.denoising), the "denoising" variant.
      "denoising_timesteps": (100, 200),
      "denoising_kind": "noise_error",
      "matches_rows": 8,
      "title": "",
      "report_photos": True,     # report.html shows people's photos; False: their fingerprints.
      "overwrite": False,        # Start over when the workdir holds results of other inputs.
  })


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every job of this package starts from: the generator, the matcher behind its
  alignment, the people, the samples' embedder, the mesh and the chunk size in use."""
  source: Source
  embedder: embedder_lib.FaceEmbedder
  people: people_lib.People
  samples: SampleEmbedder
  mesh: Any
  chunk_size: int


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad setting that needs no model to check."""
  if config.score not in im.VARIANTS:
    raise ValueError(f"unknown score variant {config.score!r}; variants: {im.VARIANTS}")
  if config.num_samples <= 0 or config.chunk_size <= 0:
    raise ValueError(f"num_samples and chunk_size must be positive, got {config.num_samples} and "
                     f"{config.chunk_size}")
  if config.num_samples < max(config.topk, 1):
    raise ValueError(f"num_samples ({config.num_samples}) must be at least topk ({config.topk})")


PeopleLoader = Callable[[ml_collections.ConfigDict, Source, embedder_lib.FaceEmbedder, Any],
                        people_lib.People]


def setup(config: ml_collections.ConfigDict,
          load_people: PeopleLoader = people_lib.load_people) -> Setup:
  """Opens the generator and the matcher, and loads the people."""
  check_config(config)
  mesh = parallel.make_mesh()
  source = open_source(config)
  if source.num_available is not None and config.num_samples > source.num_available:
    raise ValueError(f"num_samples={config.num_samples} but {source.spec} holds "
                     f"{source.num_available} images")
  embedder = embedder_lib.load_embedder(config)
  people = load_people(config, source, embedder, mesh)
  # A chunk larger than the run is cut to it (rounded up to the devices): only what was asked.
  devices = mesh.shape[parallel.DATA_AXIS]
  chunk = -(-min(config.chunk_size, config.num_samples) // devices) * devices
  return Setup(source, embedder, people, make_sample_embedder(source, embedder, mesh, chunk),
               mesh, chunk)


def attack_inputs(config: ml_collections.ConfigDict, setup: Setup) -> dict[str, Any]:
  """The record of what results depend on (see gmia.jobs.inputs); num_samples is not in it:
  a larger one extends a run."""
  return {"generator": setup.source.fingerprint, "matcher": setup.embedder.fingerprint,
          "people": setup.people.fingerprint, "seed": config.seed, "topk": config.topk,
          "false_accept_rate": config.false_accept_rate}


def _first_path(state_dir: str, begin: int) -> str:
  return os.path.join(state_dir, "first", f"from_{begin:010d}.npz")


def stream_evidence(config: ml_collections.ConfigDict, setup: Setup, refs: im.References,
                    threshold: float, state_dir: str) -> tuple[im.Evidence, im.SampleView]:
  """Streams the generator's samples against `refs` with progress; resumable in `state_dir`,
  keeping the evidence at config.power_samples, and the first config.quality_samples samples'
  embeddings (and images, where sample_quality compares them with training photos) for
  `first_samples`, so that they are not drawn twice (a diffusion model's samples are dear)."""
  first = min(config.quality_samples, config.num_samples)
  with_images = _knows_training_photos(setup.source)

  def embed(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if indices[0] >= first:
      return setup.samples.embed(indices)
    ids, embeddings, images = setup.samples.with_images(indices)
    files.save_npz(_first_path(state_dir, int(indices[0])), {
        "sample": ids, "embedding": embeddings,
        "image": images if with_images else images[:0]})
    return ids, embeddings

  progress = Progress(config.num_samples, every_steps=max(1, config.num_samples // 20),
                      items_name="samples")
  try:
    return im.stream(embed, config.num_samples, setup.chunk_size, refs,
                     threshold=threshold, k=config.topk, state_dir=state_dir,
                     fingerprint={"refs": refs.photo_id.tolist(), "state": STATE_VERSION},
                     on_chunk=lambda done, _: progress.update(done, {}),
                     keep_at=power.counts(config.power_samples, config.num_samples,
                                          setup.chunk_size), mesh=setup.mesh)
  finally:
    progress.close()


@exclusive
def run(config: ml_collections.ConfigDict, workdir: str,
        load_people: PeopleLoader = people_lib.load_people) -> dict:
  """Runs (or resumes, or extends) the attack and writes its report files into `workdir`."""
  started = time.perf_counter()
  job = setup(config, load_people)
  os.makedirs(workdir, exist_ok=True)
  check_inputs(workdir, attack_inputs(config, job), overwrite=config.overwrite, outputs=OUTPUTS)
  refs = job.people.refs
  if refs.in_population.all() or not refs.in_population.any():
    raise ValueError(f"the attack needs people to test and a population of people known not to "
                     f"be in the training data; it has {refs.num_identities} people, "
                     f"{int(refs.in_population.sum())} of them in the population")
  power.counts(config.power_samples, config.num_samples, job.chunk_size)  # Checked up front.
  threshold = im.impostor_threshold(refs.embeddings, refs.identity, config.false_accept_rate,
                                    seed=config.seed)
  evidence, view = stream_evidence(config, job, refs, threshold, os.path.join(workdir, "state"))
  summary = write_report(config, workdir, job, evidence, view, threshold)
  summary["seconds"] = time.perf_counter() - started
  summary.update(page_builders.membership_extras(summary))
  summary["provenance"] = page_parts.provenance(workdir, config, summary["seconds"])
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  page_parts.write_page(workdir, page_builders.membership_page, summary,
                           config.report_photos)
  return summary


def ranking(scores: np.ndarray, refs: im.References,
            set_p_values: np.ndarray | None) -> list[dict[str, Any]]:
  """Members and targets by decreasing score, each with its empirical p-value against the
  population (the chance that someone known not to be in the training data scores as high) and
  the person-level test's p-value of their photos (gmia.attacks.set_test; None when a person has
  fewer than two photos)."""
  population = scores[refs.in_population]
  tested = np.flatnonzero(~refs.in_population)
  order = tested[np.argsort(-scores[tested], kind="stable")]
  return [{"rank": rank + 1, "name": str(refs.names[i]), "group": str(refs.group[i]),
           "score": float(scores[i]), "p_value": im.empirical_p_value(scores[i], population),
           "set_p_value": None if set_p_values is None else float(set_p_values[i])}
          for rank, i in enumerate(order)]


def first_samples(job: Setup, count: int, state_dir: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(sample ids i64[M], unit embeddings f32[M, D], images u8[M, R, R, 3], or u8[0, ...] where
  sample_quality needs none) of the usable faces among samples 0 .. count-1, as
  `stream_evidence` kept them in `state_dir`; a chunk it did not keep (a state written before it
  kept any) is drawn again in the attack's chunks."""
  parts = []
  for begin in range(0, count, job.chunk_size):
    path = _first_path(state_dir, begin)
    if not os.path.exists(path):
      parts.append(job.samples.with_images(np.arange(begin, min(begin + job.chunk_size, count))))
      continue
    with np.load(path) as kept:
      ids, embeddings, images = kept["sample"], kept["embedding"], kept["image"]
    below = ids < count
    parts.append((ids[below], embeddings[below], images[below] if len(images) else images))
  ids, embeddings, images = (np.concatenate([p[i] for p in parts]) for i in range(3))
  return ids, embeddings, images if len(images) == len(ids) else images[:0]


def denoising_scores(config: ml_collections.ConfigDict, job: Setup) -> np.ndarray:
  """f64[I]: the gray-box score of a diffusion model, minus each person's mean denoising error
  on their reference photos (as the matcher saw them, at the model's resolution)."""
  unet, variables, schedule = job.source.denoiser
  side = job.source.resolution
  crops = jnp.asarray(job.people.crops, jnp.float32) / 127.5 - 1.0
  images = np.asarray(jax.image.resize(crops, (len(crops), side, side, 3), "linear",
                                       antialias=True))
  refs = job.people.refs
  errors = denoising.denoising_errors(unet, variables, schedule, images, refs.photo_id,
                                      tuple(config.denoising_timesteps), seed=config.seed,
                                      kind=config.denoising_kind, mesh=job.mesh)
  return denoising.person_scores(errors, refs.identity, refs.num_identities)


def _knows_training_photos(source: Source) -> bool:
  """Whether `source` is a gmia run whose training photos sample_quality can load."""
  return bool(source.split_path and source.data is not None and source.train_group)


def sample_quality(job: Setup, embeddings: np.ndarray, images: np.ndarray) -> dict | None:
  """How the first samples compare with the generator's training photos (a gmia run's): the
  Frechet distance of their embeddings, and how many are near-copies of a training photo
  (gmia.attacks.copies). None for a generator whose training photos gmia does not know."""
  source = job.source
  if not _knows_training_photos(source):
    return None
  split = IdentitySplit.load(source.split_path)
  training = run_data.load_dataset(source.data).select(split.train_photos(source.train_group))
  embedded = embed_photos(job.embedder, list(training.images),
                          [f"photo {i}" for i in training.photo_id.tolist()], job.mesh)
  ratios, _ = copies.copy_ratios(images, training.images)
  return {"samples": int(len(images)), "training_photos": int(len(training.images)),
          "frechet_distance": quality.frechet_distance(embeddings, embedded.embeddings),
          "near_copies": copies.count_copies(ratios), "near_copy_delta": copies.DELTA,
          "median_copy_ratio": float(np.median(ratios))}


def set_test_p_values(evidence: im.Evidence, refs: im.References) -> np.ndarray | None:
  """f64[I]: each person's photos (their best similarities) against the population's photos,
  one-sided Welch test; None when someone has fewer than two photos."""
  if np.bincount(refs.identity, minlength=refs.num_identities).min() < 2:
    return None
  return set_test.person_t_tests(evidence.photo_best, refs.identity, refs.in_population).p_value


def write_report(config: ml_collections.ConfigDict, workdir: str, job: Setup,
                 evidence: im.Evidence, view: im.SampleView, threshold: float) -> dict:
  """scores.csv, samples.csv, skipped.csv, roc.png, matches.png; returns the summary."""
  refs = job.people.refs
  sample_ids, embeddings, images = first_samples(
      job, min(config.quality_samples, config.num_samples), os.path.join(workdir, "state"))
  density = im.density(evidence, refs, embeddings)
  variant_scores = {v: im.scores(evidence, v, density) for v in im.VARIANTS}
  if DENOISER in job.source.supports:
    variant_scores[denoising.VARIANT] = denoising_scores(config, job)
  primary = variant_scores[config.score]
  loo = im.leave_one_out_p_values(primary, refs.in_population)
  set_p_values = set_test_p_values(evidence, refs)
  files.write_csv(os.path.join(workdir, "scores.csv"), {
      "identity": refs.names.tolist(), "group": refs.group.tolist(),
      **{f"score_{v}": np.round(s, 6).tolist() for v, s in variant_scores.items()},
      f"p_value_{config.score}": np.round(loo, 6).tolist(),
      **({} if set_p_values is None else {"p_value_set": np.round(set_p_values, 6).tolist()}),
      "best_sample": evidence.best_sample.tolist(),
      "best_photo": [job.people.labels[p] for p in evidence.best_photo.tolist()],
  })
  k = view.identity.shape[1]
  files.write_csv(os.path.join(workdir, "samples.csv"), {
      "sample": view.sample.tolist(),
      **{f"identity_{j + 1}": refs.names[view.identity[:, j]].tolist() for j in range(k)},
      **{f"similarity_{j + 1}": np.round(view.similarity[:, j], 5).tolist() for j in range(k)},
  })
  skipped = job.people.skipped
  files.write_csv(os.path.join(workdir, "skipped.csv"), {
      "photo": [p for p, _ in skipped], "reason": [r for _, r in skipped]})
  with_roc = bool(refs.is_member.any())
  variant_reports = {}
  if with_roc:
    members = refs.is_member | refs.in_population
    variant_reports = {v: metrics.membership_report(s[members], refs.is_member[members],
                                                    num_resamples=config.bootstrap_resamples,
                                                    seed=config.seed)
                       for v, s in variant_scores.items()}
    title = config.title or f"identity membership: {job.source.spec}"
    viz.plot_roc(os.path.join(workdir, "roc.png"),
                 {v: (s[members], refs.is_member[members]) for v, s in variant_scores.items()},
                 title)
  ranked = ranking(primary, refs, set_p_values)
  nearest = _matches_figure(os.path.join(workdir, "matches.png"), config, job, evidence, view,
                            ranked)
  for entry, found in zip(ranked, nearest):
    entry["nearest"] = [{"sample": s, "similarity": v} for s, v in found]
  return {
      "config": config.to_dict(),
      "versions": {"gmia": gmia.__version__, "jax": jax.__version__, "flax": flax.__version__},
      "generator": job.source.spec,
      "num_samples": int(config.num_samples),
      "chunk_size": job.chunk_size,  # attack.sample draws the named samples again with it.
      "usable_samples": int(evidence.num_samples),
      "samples_without_face": int(config.num_samples - evidence.num_samples),
      "photos": {"used": int(len(refs.identity)), "skipped": len(skipped)},
      "people": {g: int(np.sum(refs.group == g)) for g in im.GROUPS},
      "verification_threshold": threshold,
      "density_bandwidth": {"samples": density.kappa_samples,
                            "population": density.kappa_population},
      "sample_quality": sample_quality(job, embeddings, images),
      "set_test_population_below_5pct": (
          None if set_p_values is None
          else float(np.mean(set_p_values[refs.in_population] < 0.05))),
      "primary": config.score,
      "ranking": ranked,
      "population_scores": primary[refs.in_population].tolist(),
      "metrics": variant_reports,
      "power": (power_curve(config, workdir, job, evidence, variant_reports, sample_ids,
                            embeddings) if with_roc else []),
  }


def power_curve(config: ml_collections.ConfigDict, workdir: str, job: Setup,
                evidence: im.Evidence, final: dict[str, dict], sample_ids: np.ndarray,
                held_out: np.ndarray) -> list[dict]:
  """Every variant's AUC at config.power_samples and at num_samples (`final`, the attack's own
  reports), and power.png; [] when no power_samples were asked for."""
  kept = power.counts(config.power_samples, config.num_samples, job.chunk_size)
  if not kept:
    return []
  rows = power.curve(os.path.join(workdir, "state"), kept, job.people.refs, sample_ids,
                     held_out, num_resamples=config.bootstrap_resamples, seed=config.seed)
  rows.append({"num_samples": int(config.num_samples),
               "usable_samples": int(evidence.num_samples),
               "metrics": {v: final[v] for v in im.VARIANTS}})
  power.save_figure(workdir, rows, config.title or f"identity membership: {job.source.spec}")
  return rows


def nearest_samples(view: im.SampleView, evidence: im.Evidence, person: int,
                    count: int) -> list[tuple[int, float]]:
  """(sample, similarity) of the person's `count` nearest samples among those that have the
  person among their nearest people (the view); the best sample first."""
  rows, columns = np.nonzero(view.identity == person)
  order = np.argsort(-view.similarity[rows, columns], kind="stable")
  found = [(int(evidence.best_sample[person]), float(evidence.best[person]))]
  for r, c in zip(rows[order].tolist(), columns[order].tolist()):
    if len(found) == count:
      break
    if int(view.sample[r]) != found[0][0]:
      found.append((int(view.sample[r]), float(view.similarity[r, c])))
  return found


def _matches_figure(path: str, config: ml_collections.ConfigDict, job: Setup,
                    evidence: im.Evidence, view: im.SampleView,
                    ranked: list[dict]) -> list[list[tuple[int, float]]]:
  """The top people by score, each beside their nearest generated samples; the same faces one
  by one in matches.npz (each sample's image; the people's photos as the matcher saw them, with
  where they came from). Returns each row's (sample, similarity) pairs."""
  refs, per_row = job.people.refs, 3
  rows = ranked[:config.matches_rows]
  row_of = {name: i for i, name in enumerate(refs.names.tolist())}
  people = [row_of[entry["name"]] for entry in rows]
  neighbours = [nearest_samples(view, evidence, person, per_row) for person in people]
  padded = [found + [found[-1]] * (per_row - len(found)) for found in neighbours]
  samples = np.array([s for row in padded for s, _ in row])
  images = job.samples.images(samples)
  photos = job.people.crops[evidence.best_photo[people]]
  captions = [f"#{e['rank']} {e['name'][:12]} ({e['group'][0]}) p={e['p_value']:.2g}"
              for e in rows]
  sample_captions = [[f"sample {s} {v:.2f}" for s, v in row] for row in padded]
  viz.save_matches(path, photos, images.reshape(len(rows), per_row, *images.shape[1:]), captions,
                   sample_captions)
  own = np.isin(refs.identity, people)
  files.save_npz(os.path.splitext(path)[0] + ".npz", {
      "sample": samples, "sample_image": images, "photo_person": refs.names[refs.identity[own]],
      "photo_label": np.asarray(job.people.labels)[own], "photo_crop": job.people.crops[own]})
  return neighbours


def summary_lines(summary: dict) -> list[str]:
  """Human-readable lines: AUC with its interval and TPR at low FPR per score variant (with
  known members), then the top of the ranking with p-values."""
  lines = []
  for variant, result in summary["metrics"].items():
    low, high = result["auc_interval"]
    tprs = ", ".join(f"TPR@{row['fpr']:g}={row['tpr']:.2f}" + ("" if row["resolved"] else "*")
                     for row in result["tpr_at_fpr"])
    marker = " (primary)" if variant == summary["primary"] else ""
    lines.append(f"{variant:>9}{marker}: AUC {result['auc']:.3f} [{low:.3f}, {high:.3f}]  {tprs}")
  if summary["metrics"]:
    first = next(iter(summary["metrics"].values()))
    lines.append(f"  {first['num_positives']} members vs {first['num_negatives']} non-members, "
                 f"{summary['num_samples']} samples; * = FPR not resolved by that many "
                 "non-members")
  lines.append(f"  most exposed ({summary['primary']} score, p-value against "
               f"{summary['people']['population']} people of the population):")
  lines += [f"  {e['rank']:>4}. {e['name']} ({e['group']}) {e['score']:.3f}  p = {e['p_value']:.3g}"
            for e in summary["ranking"][:5]]
  if summary["samples_without_face"]:
    lines.append(f"  {summary['samples_without_face']} of {summary['num_samples']} samples had "
                 "no usable face")
  return lines
