"""Identity membership attack (Webster et al., "This Person (Probably) Exists", 2021).

Was this *person* in the generator's training set? Generate many faces, embed them and each target
person's reference photos (never their training photos) with a face encoder that never saw the
targets, and score each person by how closely the generated faces come to them. Members of the
training set are the positive class.

Samples arrive in chunks (generation is the expensive part); after each chunk the evidence is
merged into a small running state whose size depends on the number of identities, not on the
number of samples, so a run streams to millions of samples and can be saved and resumed at any
chunk boundary. Score variants, all from one pass:

  best        the highest cosine similarity between any sample and any of the person's photos
              (the paper's protocol);
  topk_mean   the mean similarity of the k samples closest to the person;
  count       how many samples the encoder would verify as the person at a threshold set from a
              chosen false-accept rate on impostor pairs of reference photos;
  density     the mean over the person's photos of log p_G(x) - log p_R(x), the density of the
              samples there over that of the population's photos (DOMIAS, van Breugel et al.
              2023; gmia.attacks.density_ratio): the state keeps every photo's kernel sum for a
              grid of bandwidths, chosen at the end by held-out likelihood.

The state also keeps each photo's best similarity, the per-photo scores of a person-level test
(gmia.attacks.set_test: a person's photos against the population's).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from absl import logging
from jax.sharding import Mesh

from gmia import files, kernels, parallel
from gmia.attacks import density_ratio

VARIANTS = ("best", "topk_mean", "count", "density")
# The kernel bandwidths whose sums the state accumulates; one is chosen per attack.
KAPPAS = density_ratio.DEFAULT_KAPPAS


GROUPS = ("member", "target", "population")


@dataclasses.dataclass(frozen=True)
class References:
  """Reference photos of the people an attack scores, embedded.

  embeddings: f32[R, D] unit vectors; identity: i32[R], the row of the photo's person (0..I-1);
  photo_id: i64[R]; names: str[I]; group: str[I], one of GROUPS: "member" (known to be in the
  generator's training data), "target" (unknown: the people tested), "population" (known not to
  be in it: the negatives, and the reference of every p-value).
  """

  embeddings: np.ndarray
  identity: np.ndarray
  photo_id: np.ndarray
  names: np.ndarray
  group: np.ndarray

  @property
  def num_identities(self) -> int:
    return len(self.names)

  @property
  def is_member(self) -> np.ndarray:
    return self.group == "member"

  @property
  def in_population(self) -> np.ndarray:
    return self.group == "population"


def make_references(embeddings: np.ndarray, photo_person: np.ndarray, photo_id: np.ndarray,
                    groups: Mapping[str, str]) -> References:
  """Indexes embedded reference photos by person: photo_person[r] names the person of photo r
  (any type; compared as str), groups {name: group} lists every person in report order."""
  names = np.asarray([str(name) for name in groups])
  group = np.asarray([groups[name] for name in groups])
  unknown_groups = sorted(set(group.tolist()) - set(GROUPS))
  if unknown_groups:
    raise ValueError(f"unknown group(s) {unknown_groups}; groups: {GROUPS}")
  row_of = {name: i for i, name in enumerate(names.tolist())}
  if len(row_of) != len(names):
    raise ValueError("a person is listed twice")
  person = [str(p) for p in photo_person]
  unknown = sorted({p for p in person if p not in row_of})
  if unknown:
    raise ValueError(f"reference photos of people in no group, e.g. {unknown[:5]}")
  identity = np.array([row_of[p] for p in person], np.int32)
  missing = np.setdiff1d(np.arange(len(names)), identity)
  if len(missing):
    raise ValueError(f"people without reference photos: {names[missing][:5].tolist()}")
  return References(np.asarray(embeddings, np.float32), identity, np.asarray(photo_id, np.int64),
                    names, group)


def impostor_threshold(embeddings: np.ndarray, identity: np.ndarray, false_accept_rate: float, *,
                       max_pairs: int = 1_000_000, seed: int = 0) -> float:
  """The cosine threshold that accepts `false_accept_rate` of impostor pairs.

  embeddings: f32[N, D] unit; identity: int[N]. Pairs of photos of different people are drawn at
  random (at most `max_pairs`, seeded), so the cost stays bounded for any number of photos.
  """
  if not 0 < false_accept_rate < 1:
    raise ValueError(f"false_accept_rate must be in (0, 1), got {false_accept_rate}")
  rng = np.random.default_rng(seed)
  n = len(identity)
  first, second = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
  impostor = identity[first] != identity[second]
  first, second = first[impostor], second[impostor]
  if len(first) * false_accept_rate < 1:
    raise ValueError(f"{len(first)} impostor pairs cannot resolve a false-accept rate of "
                     f"{false_accept_rate:g}")
  scores = np.einsum("nd,nd->n", embeddings[first], embeddings[second])
  return float(np.quantile(scores, 1 - false_accept_rate, method="higher"))


@dataclasses.dataclass(frozen=True)
class Evidence:
  """Running evidence per target identity after `num_samples` samples.

  best: f32[I] best similarity; best_sample: i64[I] the sample; best_photo: i64[I] the row of the
  reference photo; topk: f32[I, k] the k best sample similarities; count: i64[I] samples verified
  as the person; photo_best: f32[R] each reference photo's best similarity; log_kernel:
  f64[len(KAPPAS), R] each photo's log sum over samples of exp(kappa cos).
  """

  num_samples: np.ndarray
  best: np.ndarray
  best_sample: np.ndarray
  best_photo: np.ndarray
  topk: np.ndarray
  count: np.ndarray
  photo_best: np.ndarray
  log_kernel: np.ndarray

  @classmethod
  def empty(cls, num_identities: int, k: int, num_photos: int) -> Evidence:
    return cls(num_samples=np.zeros((), np.int64),
               best=np.full(num_identities, -np.inf, np.float32),
               best_sample=np.full(num_identities, -1, np.int64),
               best_photo=np.full(num_identities, -1, np.int64),
               topk=np.full((num_identities, k), -np.inf, np.float32),
               count=np.zeros(num_identities, np.int64),
               photo_best=np.full(num_photos, -np.inf, np.float32),
               log_kernel=np.full((len(KAPPAS), num_photos), -np.inf))

  def to_arrays(self) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_arrays(cls, arrays) -> Evidence:
    return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class SampleView:
  """Per sample of a chunk, its nearest people: sample i64[C] (the sample's index in the
  generator's stream), similarity f32[C, k], identity i32[C, k]."""

  sample: np.ndarray
  similarity: np.ndarray
  identity: np.ndarray


def observe(evidence: Evidence, sample_ids: np.ndarray, samples: np.ndarray, refs: References,
            *, threshold: float, view_k: int = 3, chunk_size: int = kernels.DEFAULT_CHUNK_SIZE,
            mesh: Mesh | None = None) -> tuple[Evidence, SampleView]:
  """Merges one chunk of sample embeddings f32[C, D] (unit), the samples sample_ids i64[C] of
  the generator, into the evidence.

  Returns the new evidence and the chunk's sample view (each sample's `view_k` nearest
  identities, for the "this person exists" list). With a `mesh`, samples are split over its data
  axis (gmia.kernels.search).
  """
  if samples.ndim != 2 or samples.shape[1] != refs.embeddings.shape[1]:
    raise ValueError(f"sample embeddings must be [C, {refs.embeddings.shape[1]}], got "
                     f"{samples.shape}")
  if sample_ids.shape != samples.shape[:1]:
    raise ValueError(f"{len(samples)} sample embeddings with {len(sample_ids)} sample ids")
  num_ids, k = refs.num_identities, evidence.topk.shape[1]
  chunk_k = min(k, len(samples))
  args = (samples, refs.embeddings, refs.identity, num_ids)
  options = {"mesh": mesh, "chunk_size": chunk_size}
  best, best_sample, best_photo = kernels.best_match_per_identity(*args, **options)
  topk, _ = kernels.top_k_per_identity(*args, chunk_k, **options)
  count = kernels.count_above(*args, threshold, **options)
  view_sim, view_id = kernels.top_k_identities(*args, min(view_k, num_ids), **options)
  best, best_sample, best_photo, topk, count, view_sim, view_id = parallel.to_host(
      (best, best_sample, best_photo, topk, count, view_sim, view_id))
  photo_best, log_kernel = density_ratio.log_kernel_sums(refs.embeddings, samples, KAPPAS)
  merged = _merge(evidence, Evidence(
      num_samples=np.asarray(len(samples), np.int64), best=best,
      best_sample=np.asarray(sample_ids, np.int64)[best_sample],
      best_photo=best_photo.astype(np.int64), topk=topk, count=count.astype(np.int64),
      photo_best=photo_best, log_kernel=log_kernel))
  return merged, SampleView(np.asarray(sample_ids, np.int64), view_sim, view_id)


def _merge(old: Evidence, new: Evidence) -> Evidence:
  """Combines evidence of disjoint sample sets; ties keep the earlier sample."""
  take_new = new.best > old.best
  k = old.topk.shape[1]
  topk = -np.sort(-np.concatenate([old.topk, new.topk], axis=1), axis=1)[:, :k]
  return Evidence(
      num_samples=old.num_samples + new.num_samples,
      best=np.where(take_new, new.best, old.best),
      best_sample=np.where(take_new, new.best_sample, old.best_sample),
      best_photo=np.where(take_new, new.best_photo, old.best_photo),
      topk=topk, count=old.count + new.count,
      photo_best=np.maximum(old.photo_best, new.photo_best),
      log_kernel=np.logaddexp(old.log_kernel, new.log_kernel))


@dataclasses.dataclass(frozen=True)
class Density:
  """The density ratio of an attack: photo f64[R] (log p_G - log p_R at each reference photo),
  person f64[I] (their photos' mean), and the bandwidths chosen for the samples and the
  population."""
  photo: np.ndarray
  person: np.ndarray
  kappa_samples: float
  kappa_population: float


def density(evidence: Evidence, refs: References, held_out: np.ndarray) -> Density:
  """The density ratio of every reference photo and person: p_G from the streamed kernel sums
  at the bandwidth that best predicts `held_out` (f32[H, D], embeddings of generated samples,
  each left out in turn); p_R the kernel density of the population's photos, its bandwidth by
  leaving out whole people, and at each photo without its own person's photos."""
  kappa_samples, _ = density_ratio.select_kappa(held_out, KAPPAS)
  row = KAPPAS.index(kappa_samples)
  dim = refs.embeddings.shape[1]
  log_generator = (evidence.log_kernel[row]
                   + density_ratio.log_vmf_normalizer(kappa_samples, dim)
                   - np.log(int(evidence.num_samples)))
  population = np.flatnonzero(refs.in_population[refs.identity])
  kappa_population, _ = density_ratio.select_kappa(
      refs.embeddings[population], KAPPAS, groups=refs.identity[population])
  log_population = density_ratio.log_densities(
      refs.embeddings, refs.embeddings[population], [kappa_population],
      query_group=refs.identity, point_group=refs.identity[population])[0]
  photo = log_generator - log_population
  return Density(photo, density_ratio.person_scores(photo, refs.identity, refs.num_identities),
                 kappa_samples, kappa_population)


def scores(evidence: Evidence, variant: str, density_scores: Density | None = None) -> np.ndarray:
  """f64[I]: membership score per target identity (higher: more likely a member); `density`
  needs the attack's Density."""
  if variant == "best":
    return evidence.best.astype(np.float64)
  if variant == "topk_mean":
    filled = np.isfinite(evidence.topk).all(axis=1)
    if not filled.all():
      raise ValueError(f"topk_mean needs at least {evidence.topk.shape[1]} samples, "
                       f"got {int(evidence.num_samples)}")
    return evidence.topk.mean(axis=1, dtype=np.float64)
  if variant == "count":
    return evidence.count.astype(np.float64)
  if variant == "density":
    if density_scores is None:
      raise ValueError("the density variant needs the attack's density (identity_membership."
                       "density)")
    return density_scores.person
  raise ValueError(f"unknown score variant {variant!r}; variants: {VARIANTS}")


def empirical_p_value(score: float, population: np.ndarray) -> float:
  """(1 + #population >= score) / (1 + N): never 0, exact under exchangeability."""
  if len(population) == 0:
    raise ValueError("a p-value needs a population of non-member scores, got none")
  return float((1 + np.sum(population >= score)) / (1 + len(population)))


def leave_one_out_p_values(scores: np.ndarray, in_population: np.ndarray) -> np.ndarray:
  """f64[I]: each person's empirical p-value against the population, a member of the
  population against the others."""
  population = np.sort(scores[in_population])
  at_least = len(population) - np.searchsorted(population, scores, side="left") - in_population
  return (1 + at_least) / (1 + len(population) - in_population)


def stream(embed_samples: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
           num_samples: int, chunk_size: int, refs: References, *, threshold: float, k: int,
           state_dir: str, fingerprint: Mapping,
           on_chunk: Callable[[int, Evidence], None] | None = None,
           keep_at: Sequence[int] = (),
           mesh: Mesh | None = None) -> tuple[Evidence, SampleView]:
  """Runs `observe` over samples 0..num_samples-1 in chunks, saving state after each; resumes
  where it stopped, and a larger num_samples extends a finished run.

  embed_samples(indices i64[n]) -> (sample ids i64[m], unit embeddings f32[m, D]) of the usable
  ones among those samples (a sample without a usable face is left out): a pure function of the
  indices, so a resumed run sees the same samples whatever the chunks. `fingerprint` (JSON)
  identifies the attack: state saved under another fingerprint is refused rather than silently
  mixed in. on_chunk(samples done, evidence) reports progress. The evidence after each count of
  `keep_at` (gmia.attacks.power.counts: multiples of chunk_size) is kept as well
  (`kept_evidence`). Returns the final
  evidence and the sample view of every usable sample.
  """
  os.makedirs(os.path.join(state_dir, "views"), exist_ok=True)
  state_path = os.path.join(state_dir, "evidence.npz")
  fingerprint_json = json.dumps(fingerprint, sort_keys=True)
  evidence, done = Evidence.empty(refs.num_identities, k, len(refs.identity)), 0
  if os.path.exists(state_path):
    with np.load(state_path) as saved:
      if str(saved["fingerprint"]) != fingerprint_json:
        raise ValueError(f"{state_path} belongs to another attack configuration; use a fresh "
                         "workdir or delete it")
      evidence, done = Evidence.from_arrays(saved), int(saved["samples_done"])
  if done > num_samples:
    raise ValueError(f"{state_dir} holds the evidence of {done} samples; num_samples="
                     f"{num_samples} asks for fewer: use num_samples >= {done} or a fresh workdir")
  if done:
    logging.info("resuming at sample %d of %d (evidence in %s)", done, num_samples, state_dir)
  for begin in range(done, num_samples, chunk_size):
    indices = np.arange(begin, min(begin + chunk_size, num_samples))
    ids, embeddings = embed_samples(indices)
    view = SampleView(np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
                      np.zeros((0, 0), np.int32))
    if len(ids):
      evidence, view = observe(evidence, ids, embeddings, refs, threshold=threshold, mesh=mesh)
    files.save_npz(_view_path(state_dir, begin), {"sample": view.sample,
                                                   "similarity": view.similarity,
                                                   "identity": view.identity})
    files.save_npz(state_path, {**evidence.to_arrays(),
                                "samples_done": np.asarray(indices[-1] + 1),
                                "fingerprint": np.asarray(fingerprint_json)})
    if indices[-1] + 1 in keep_at:
      files.save_npz(_kept_path(state_dir, int(indices[-1] + 1)), evidence.to_arrays())
    parallel.barrier(f"evidence of samples {begin}")  # Written (by process 0) before read.
    if on_chunk is not None:
      on_chunk(int(indices[-1] + 1), evidence)
  views = []
  for name in sorted(os.listdir(os.path.join(state_dir, "views"))):
    with np.load(os.path.join(state_dir, "views", name)) as saved:
      if saved["sample"].size:
        views.append(SampleView(saved["sample"], saved["similarity"], saved["identity"]))
  if not views:
    raise ValueError(f"none of the {num_samples} samples had a usable face to compare (the "
                     "warning above says what the face detector saw and which setting to change)")
  return evidence, SampleView(*(np.concatenate([getattr(v, f.name) for v in views])
                                for f in dataclasses.fields(SampleView)))


def _kept_path(state_dir: str, num_samples: int) -> str:
  return os.path.join(state_dir, "kept", f"evidence_{num_samples:010d}.npz")


def kept_evidence(state_dir: str, num_samples: int) -> Evidence:
  """The evidence `stream` kept after the first `num_samples` samples (its `keep_at`)."""
  path = _kept_path(state_dir, num_samples)
  if not os.path.exists(path):
    raise ValueError(f"{state_dir} kept no evidence at {num_samples} samples (the count was not "
                     "asked for while those samples were drawn): rerun in a fresh workdir")
  with np.load(path) as saved:
    return Evidence.from_arrays(saved)


def _view_path(state_dir: str, begin: int) -> str:
  return os.path.join(state_dir, "views", f"from_{begin:010d}.npz")
