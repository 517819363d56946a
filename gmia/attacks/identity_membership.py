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
              chosen false-accept rate on impostor pairs of reference photos.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping

import numpy as np
from jax.sharding import Mesh

from gmia import files, kernels

VARIANTS = ("best", "topk_mean", "count")


@dataclasses.dataclass(frozen=True)
class References:
  """Reference photos of the target identities, embedded.

  embeddings: f32[R, D] unit vectors; identity: i32[R], the row of the photo's person in
  `target_ids` (0..I-1); photo_id: i64[R]; target_ids: i64[I] dataset identity ids;
  is_member: bool[I].
  """

  embeddings: np.ndarray
  identity: np.ndarray
  photo_id: np.ndarray
  target_ids: np.ndarray
  is_member: np.ndarray

  @property
  def num_identities(self) -> int:
    return len(self.target_ids)


def make_references(embeddings: np.ndarray, dataset_identity: np.ndarray, photo_id: np.ndarray,
                    members: np.ndarray, non_members: np.ndarray) -> References:
  """Indexes the embedded reference photos of members and non-members by target row."""
  target_ids = np.concatenate([members, non_members]).astype(np.int64)
  if len(members) == 0 or len(non_members) == 0:
    raise ValueError(f"the attack needs members and non-members, got {len(members)} and "
                     f"{len(non_members)}")
  row_of = {int(t): i for i, t in enumerate(target_ids)}
  if len(row_of) != len(target_ids):
    raise ValueError("an identity is both a member and a non-member")
  unknown = [int(i) for i in dataset_identity if int(i) not in row_of]
  if unknown:
    raise ValueError(f"reference photos of identities that are no target, e.g. {unknown[:5]}")
  identity = np.array([row_of[int(i)] for i in dataset_identity], np.int32)
  missing = np.setdiff1d(np.arange(len(target_ids)), identity)
  if len(missing):
    raise ValueError(f"target identities without reference photos: {target_ids[missing][:5]}")
  is_member = np.arange(len(target_ids)) < len(members)
  return References(np.asarray(embeddings, np.float32), identity, np.asarray(photo_id, np.int64),
                    target_ids, is_member)


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
  as the person.
  """

  num_samples: np.ndarray
  best: np.ndarray
  best_sample: np.ndarray
  best_photo: np.ndarray
  topk: np.ndarray
  count: np.ndarray

  @classmethod
  def empty(cls, num_identities: int, k: int) -> Evidence:
    return cls(num_samples=np.zeros((), np.int64),
               best=np.full(num_identities, -np.inf, np.float32),
               best_sample=np.full(num_identities, -1, np.int64),
               best_photo=np.full(num_identities, -1, np.int64),
               topk=np.full((num_identities, k), -np.inf, np.float32),
               count=np.zeros(num_identities, np.int64))

  def to_arrays(self) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_arrays(cls, arrays) -> Evidence:
    return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class SampleView:
  """Per sample of a chunk, its nearest target identities: sim f32[C, k], identity i32[C, k]."""

  similarity: np.ndarray
  identity: np.ndarray


def observe(evidence: Evidence, samples: np.ndarray, refs: References, *, threshold: float,
            view_k: int = 3, chunk_size: int = kernels.DEFAULT_CHUNK_SIZE,
            mesh: Mesh | None = None) -> tuple[Evidence, SampleView]:
  """Merges one chunk of sample embeddings f32[C, D] (unit) into the evidence.

  Sample indices continue from `evidence.num_samples`. Returns the new evidence and the chunk's
  sample view (each sample's `view_k` nearest identities, for the "this person exists" list).
  With a `mesh`, samples are split over its data axis (gmia.kernels.sharded).
  """
  if samples.ndim != 2 or samples.shape[1] != refs.embeddings.shape[1]:
    raise ValueError(f"sample embeddings must be [C, {refs.embeddings.shape[1]}], got "
                     f"{samples.shape}")
  offset = int(evidence.num_samples)
  num_ids, k = refs.num_identities, evidence.topk.shape[1]
  chunk_k = min(k, len(samples))
  args = (samples, refs.embeddings, refs.identity, num_ids)
  ops, options = (kernels, {}) if mesh is None else (kernels.sharded, {"mesh": mesh})
  options["chunk_size"] = chunk_size
  best, best_sample, best_photo = ops.best_match_per_identity(*args, **options)
  topk, _ = ops.top_k_per_identity(*args, chunk_k, **options)
  count = ops.count_above(*args, threshold, **options)
  view_sim, view_id = ops.top_k_identities(*args, min(view_k, num_ids), **options)
  merged = _merge(evidence, Evidence(
      num_samples=np.asarray(len(samples), np.int64), best=np.asarray(best),
      best_sample=np.asarray(best_sample, np.int64) + offset,
      best_photo=np.asarray(best_photo, np.int64), topk=np.asarray(topk),
      count=np.asarray(count, np.int64)))
  return merged, SampleView(np.asarray(view_sim), np.asarray(view_id))


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
      topk=topk, count=old.count + new.count)


def scores(evidence: Evidence, variant: str) -> np.ndarray:
  """f64[I]: membership score per target identity (higher: more likely a member)."""
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
  raise ValueError(f"unknown score variant {variant!r}; variants: {VARIANTS}")


def stream(embed_chunk: Callable[[int], np.ndarray], num_chunks: int, refs: References, *,
           threshold: float, k: int, state_dir: str, fingerprint: Mapping,
           on_chunk: Callable[[int, Evidence], None] | None = None,
           mesh: Mesh | None = None) -> tuple[Evidence, SampleView]:
  """Runs `observe` over chunks 0..num_chunks-1, saving state after each; resumes where it stopped.

  embed_chunk(c) -> f32[C, D]: the unit embeddings of chunk c's samples, a pure function of c
  (seeded by c), so a resumed run sees the same samples. `fingerprint` (JSON) identifies the
  attack: state saved under another fingerprint is refused rather than silently mixed in.
  Returns the final evidence and the sample view of every sample.
  """
  os.makedirs(os.path.join(state_dir, "views"), exist_ok=True)
  state_path = os.path.join(state_dir, "evidence.npz")
  fingerprint_json = json.dumps(fingerprint, sort_keys=True)
  evidence, start = Evidence.empty(refs.num_identities, k), 0
  if os.path.exists(state_path):
    with np.load(state_path) as saved:
      if str(saved["fingerprint"]) != fingerprint_json:
        raise ValueError(f"{state_path} belongs to another attack configuration; use a fresh "
                         "workdir or delete it")
      evidence, start = Evidence.from_arrays(saved), int(saved["chunks_done"])
  for chunk in range(start, num_chunks):
    evidence, view = observe(evidence, embed_chunk(chunk), refs, threshold=threshold, mesh=mesh)
    files.save_npz(_view_path(state_dir, chunk),
                   {"similarity": view.similarity, "identity": view.identity})
    files.save_npz(state_path, {**evidence.to_arrays(), "chunks_done": np.asarray(chunk + 1),
                                "fingerprint": np.asarray(fingerprint_json)})
    if on_chunk is not None:
      on_chunk(chunk + 1, evidence)
  views = []
  for chunk in range(num_chunks):
    with np.load(_view_path(state_dir, chunk)) as saved:
      views.append(SampleView(saved["similarity"], saved["identity"]))
  return evidence, SampleView(np.concatenate([v.similarity for v in views]),
                              np.concatenate([v.identity for v in views]))


def _view_path(state_dir: str, chunk: int) -> str:
  return os.path.join(state_dir, "views", f"chunk_{chunk:06d}.npz")
