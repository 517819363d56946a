"""The people an attack scores: from a gmia run's identity split, or from folders of photos.

Every person is in one group (gmia.attacks.identity_membership.GROUPS): a *member* (known to be
in the generator's training data: a controlled experiment), a *target* (unknown: the people
tested in a real audit) or the *population* (known not to be in it, e.g. LFW for an FFHQ model:
the negatives of the ROC and the reference of every p-value).

  split      a gmia run's split.json (the generator's own by default): its members' and
             non-members' reference photos, which never trained anything;
  folders    targets_dir, members_dir and population_dir, identity folders DIR/<person>/<photo>:
             photos decoded as a user expects (gmia.data.photos), aligned and embedded like the
             samples; photos without a usable face are named and skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gmia import fingerprint
from gmia.attacks import identity_membership as im
from gmia.data import photos as photo_files
from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.faces.embedder import FaceEmbedder, embed_photos
from gmia.sources import Source

FOLDERS = {"members_dir": "member", "targets_dir": "target", "population_dir": "population"}


def config_fields() -> dict[str, Any]:
  """The config fields that choose the people."""
  return {
      "split_path": "",       # A gmia split.json; default: the gmia generator's own.
      "targets_dir": "",      # Identity folders DIR/<person>/<photo> of the people tested,
      "members_dir": "",      # ... of people known to be in the training data (for a ROC),
      "population_dir": "",   # ... of people known not to be (required with folders).
  }


@dataclasses.dataclass(frozen=True)
class People:
  """refs: the embedded reference photos; crops: u8[R, S, S, 3] what the matcher saw of each;
  labels: str[R] where each photo came from; skipped: [(photo, reason)]; fingerprint: what the
  photos are (hashes of their bytes, or of the split and the data set)."""
  refs: im.References
  crops: np.ndarray
  labels: list[str]
  skipped: list[tuple[str, str]]
  fingerprint: dict[str, Any]

  def select(self, names: Mapping[str, str]) -> People:
    """Only the people `names` lists, in its order, with the groups it gives them."""
    keep = np.isin(self.refs.names[self.refs.identity], list(names))
    refs = im.make_references(self.refs.embeddings[keep],
                              self.refs.names[self.refs.identity][keep],
                              self.refs.photo_id[keep], names)
    return People(refs, self.crops[keep], [l for l, k in zip(self.labels, keep) if k],
                  self.skipped, {**self.fingerprint, "selected": dict(names)})


def folder_mode(config: ml_collections.ConfigDict) -> bool:
  return any(config[field] for field in FOLDERS)


def load_people(config: ml_collections.ConfigDict, source: Source, embedder: FaceEmbedder,
                mesh) -> People:
  """The people `config` names: identity folders when any *_dir is set, else a split."""
  if folder_mode(config):
    if not config.population_dir:
      raise ValueError("config.population_dir is required with targets_dir or members_dir: "
                       "identity folders of people known not to be in the training data")
    if not (config.targets_dir or config.members_dir):
      raise ValueError("give targets_dir (people to test) or members_dir (known members)")
    folders = {config[field]: group for field, group in FOLDERS.items() if config[field]}
    return folder_people(folders, embedder, mesh)
  return split_people(config, source, embedder, mesh)


def split_people(config: ml_collections.ConfigDict, source: Source, embedder: FaceEmbedder,
                 mesh) -> People:
  """Members and non-members (the population) of a gmia split, by their reference photos."""
  split, arrays = load_split(config, source, "targets_dir (or members_dir) and population_dir, "
                             "identity folders of photos")
  groups = {**{str(i): "member" for i in split.identities("members").tolist()},
            **{str(i): "population" for i in split.identities("non_members").tolist()}}
  chosen = arrays.select(np.concatenate([split.reference_photos("members"),
                                         split.reference_photos("non_members")]))
  embedded = embed_photos(embedder, list(chosen.images),
                          [f"photo {i}" for i in chosen.photo_id.tolist()], mesh)
  kept = embedded.kept
  refs = im.make_references(embedded.embeddings, chosen.identity[kept], chosen.photo_id[kept],
                            groups)
  return People(refs, embedded.crops, [f"photo {i}" for i in chosen.photo_id[kept].tolist()],
                embedded.skipped,
                {"split": fingerprint.tree_digest(split.to_json()),
                 "photos": fingerprint.tree_digest(chosen.images)})


def load_split(config: ml_collections.ConfigDict, source: Source, instead: str
               ) -> tuple[IdentitySplit, Any]:
  """(the identity split, the data set) of config.split_path or the source's own; a source
  without one is a ValueError telling to give `instead`."""
  split_path = config.split_path or source.split_path
  if not split_path or source.data is None:
    raise ValueError(f"{source.spec} comes with no identity split: give {instead}")
  return IdentitySplit.load(split_path), run_data.load_dataset(source.data)


def folder_people(folders: Mapping[str, str], embedder: FaceEmbedder, mesh) -> People:
  """The people of identity folders {DIR: group}: DIR/<person>/<photo>."""
  entries, group_of = [], {}
  for folder, group in folders.items():
    listed = photo_files.identity_photos(folder)
    if not listed:
      raise ValueError(f"no identity folders with photos in {folder} (expected "
                       f"{folder}/<person>/<photo>)")
    for path, person in listed:
      if group_of.setdefault(person, group) != group:
        raise ValueError(f"{person!r} is in two groups ({group_of[person]} and {group})")
      entries.append((path, person, group))
  return photo_people(entries, embedder, mesh)


def photo_people(entries: Sequence[tuple[str, str, str]], embedder: FaceEmbedder,
                 mesh) -> People:
  """People from photo files [(path, person, group)]: decoded, aligned and embedded."""
  group_of = {person: group for _, person, group in entries}
  person_of = {path: person for path, person, _ in entries}
  decoded = photo_files.Reader(strict=embedder.strict).read([path for path, _, _ in entries])
  embedded = embed_photos(embedder, decoded.images, decoded.paths, mesh)
  kept_paths = [decoded.paths[i] for i in embedded.kept]
  skipped = [(s.path, s.reason) for s in decoded.skipped] + embedded.skipped
  without = sorted(set(group_of) - {person_of[p] for p in kept_paths})
  if without:
    logging.warning("%d people have no usable photo and are left out: %s", len(without),
                    ", ".join(without[:10]))
  groups = {name: group for name, group in group_of.items() if name not in without}
  refs = im.make_references(embedded.embeddings, [person_of[p] for p in kept_paths],
                            np.arange(len(kept_paths)), groups)
  return People(refs, embedded.crops, kept_paths, skipped, {"photos": _digest(kept_paths)})


def merge(first: People, second: People) -> People:
  """The people of both (no person in both)."""
  names = lambda p: p.refs.names[p.refs.identity]
  groups = {**dict(zip(first.refs.names.tolist(), first.refs.group.tolist())),
            **dict(zip(second.refs.names.tolist(), second.refs.group.tolist()))}
  if len(groups) != first.refs.num_identities + second.refs.num_identities:
    raise ValueError("a person is among both sets of photos")
  refs = im.make_references(
      np.concatenate([first.refs.embeddings, second.refs.embeddings]),
      np.concatenate([names(first), names(second)]),
      np.arange(len(first.labels) + len(second.labels)), groups)
  return People(refs, np.concatenate([first.crops, second.crops]), first.labels + second.labels,
                first.skipped + second.skipped,
                {"first": first.fingerprint, "second": second.fingerprint})


def _digest(paths: Sequence[str]) -> str:
  """sha256 (16 hex digits) of the photos' folder-relative names and bytes."""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.join(*path.split(os.sep)[-2:]).encode())
    with open(path, "rb") as handle:
      digest.update(hashlib.sha256(handle.read()).digest())
  return digest.hexdigest()[:16]
