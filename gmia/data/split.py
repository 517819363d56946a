"""A deterministic split of identities into roles, and of each target's photos.

Roles (disjoint identity sets):
  members      their training photos train the target generator;
  non_members  never seen by the target generator (the negatives of the attack);
  shadow       train a control / reference generator on other people (calibration, control runs);
  encoder      train the face-recognition encoder, so it never saw any target.
Each target identity (members, non-members, shadow) keeps `reference_photos` photos aside: the
attacker's photos of that person, never used to train anything. The split is saved as JSON next
to every run so later stages reproduce it exactly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from gmia.data.arrays import FaceArrays
from gmia.files import read_json, write_atomic

GROUPS = ("members", "non_members", "shadow", "encoder")
TARGET_GROUPS = ("members", "non_members", "shadow")
FORMAT = "gmia.identity_split/1"


@dataclasses.dataclass(frozen=True)
class IdentitySplit:
  """Identity ids per group and, per identity, its training and reference photo ids."""

  seed: int
  groups: Mapping[str, np.ndarray]
  train: Mapping[int, np.ndarray]
  reference: Mapping[int, np.ndarray]

  def __post_init__(self):
    if set(self.groups) != set(GROUPS):
      raise ValueError(f"a split needs exactly the groups {GROUPS}, got {sorted(self.groups)}")
    seen: dict[int, str] = {}
    for group, ids in self.groups.items():
      for identity in ids.tolist():
        if identity in seen:
          raise ValueError(f"identity {identity} is in both {seen[identity]} and {group}")
        seen[identity] = group
    for identity in seen:
      train, reference = self.train.get(identity), self.reference.get(identity)
      if train is None or reference is None:
        raise ValueError(f"identity {identity} has no photo lists in the split")
      if np.intersect1d(train, reference).size:
        raise ValueError(f"identity {identity} has photos both in training and reference")

  def identities(self, group: str) -> np.ndarray:
    """i64[K]: the identities of `group`."""
    return self.groups[_check_group(group)]

  def train_photos(self, group: str) -> np.ndarray:
    """i64[P]: training photo ids of every identity in `group`."""
    return self._photos(self.train, group)

  def reference_photos(self, group: str) -> np.ndarray:
    """i64[P]: reference photo ids (never trained on) of every identity in `group`."""
    return self._photos(self.reference, group)

  def _photos(self, table: Mapping[int, np.ndarray], group: str) -> np.ndarray:
    ids = self.identities(group)
    if not len(ids):
      return np.zeros((0,), np.int64)
    return np.concatenate([table[int(i)] for i in ids]).astype(np.int64)

  def to_json(self) -> dict:
    return {
        "format": FORMAT, "seed": self.seed,
        "groups": {g: self.groups[g].tolist() for g in GROUPS},
        "photos": {str(i): {"train": self.train[i].tolist(),
                            "reference": self.reference[i].tolist()} for i in sorted(self.train)},
    }

  @classmethod
  def from_json(cls, data: Any, name: str = "the split") -> IdentitySplit:
    """The split of `to_json`'s dict; ValueError naming `name` (the file) and the first field
    that is missing or of the wrong type."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
      found = data.get("format") if isinstance(data, Mapping) else f"a JSON {type(data).__name__}"
      raise ValueError(f"{name} is not a gmia identity split (format {found!r}, expected "
                       f"{FORMAT!r})")
    groups, photos = _field(data, "groups", Mapping, name), _field(data, "photos", Mapping, name)
    seed = _field(data, "seed", int, name)
    ids = {g: _ids(_field(groups, g, list, name, "groups."), f"groups.{g}", name) for g in GROUPS}
    train, reference = {}, {}
    for identity, lists in photos.items():
      where = f"photos.{identity}"
      if not identity.lstrip("-").isdigit() or not isinstance(lists, Mapping):
        raise ValueError(f"{name}: field {where!r} must map an identity number to its photo "
                         "lists")
      train[int(identity)] = _ids(_field(lists, "train", list, name, where + "."),
                                  where + ".train", name)
      reference[int(identity)] = _ids(_field(lists, "reference", list, name, where + "."),
                                      where + ".reference", name)
    try:
      return cls(seed=seed, groups=ids, train=train, reference=reference)
    except ValueError as error:
      raise ValueError(f"{name}: {error}") from None

  def save(self, path: str) -> None:
    """Writes the JSON atomically: a reader never sees half a split."""
    write_atomic(path, json.dumps(self.to_json()))

  @classmethod
  def load(cls, path: str) -> IdentitySplit:
    """The split saved at `path`; ValueError naming the file and what is wrong with it."""
    try:
      data = read_json(path)
    except RecursionError:
      raise ValueError(f"{path} is not a gmia identity split: JSON nested too deeply") from None
    except UnicodeDecodeError as error:
      raise ValueError(f"{path} is not valid JSON: {error}") from None
    return cls.from_json(data, path)


def _field(data: Mapping, key: str, kind: type, name: str, prefix: str = "") -> Any:
  """data[key], which must be of `kind` (int: not a bool)."""
  value = data.get(key)
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    found = "missing" if key not in data else f"a {type(value).__name__}"
    raise ValueError(f"{name}: field {prefix + key!r} must be a JSON "
                     f"{_JSON_NAMES[kind]}, it is {found}")
  return value


def _ids(values: list, field: str, name: str) -> np.ndarray:
  """i64[N] of a list of integers (identities or photo ids)."""
  if not all(isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63
             for v in values):
    raise ValueError(f"{name}: field {field!r} must be a list of 64-bit integers")
  return np.asarray(values, np.int64).reshape(-1)


_JSON_NAMES = {Mapping: "object", list: "list", int: "integer"}


def _check_group(group: str) -> str:
  if group not in GROUPS:
    raise ValueError(f"unknown group {group!r}; groups are {GROUPS}")
  return group


def split_photos(identity: int, photo_ids: np.ndarray, *, reference_photos: int,
                 min_train_photos: int, max_train_photos: int | None,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits one identity's photos -> (training ids, reference ids), seeded per identity."""
  needed = reference_photos + min_train_photos
  if len(photo_ids) < needed:
    raise ValueError(f"identity {identity} has {len(photo_ids)} photos; splitting needs at least "
                     f"{needed} ({reference_photos} reference + {min_train_photos} training)")
  shuffled = np.random.default_rng([seed, identity]).permutation(np.sort(photo_ids))
  reference, train = shuffled[:reference_photos], shuffled[reference_photos:]
  if max_train_photos is not None:
    train = train[:max_train_photos]
  return np.sort(train), np.sort(reference)


def overrepresent(split: IdentitySplit, arrays: FaceArrays, *, count: int,
                  max_train_photos: int | None) -> IdentitySplit:
  """`split` with `count` of its members (seeded choice) trained on up to `max_train_photos`
  photos each (None: all but their reference photos): a few people over-represented.

  Everything else stays: the other members' training photos, every reference photo, the groups.
  A chosen member's training photos extend its old ones (the same per-identity shuffle).
  """
  members = split.identities("members")
  if not 0 < count <= len(members):
    raise ValueError(f"cannot over-represent {count} of {len(members)} members")
  chosen = np.random.default_rng([split.seed, 2**21]).choice(members, count, replace=False)
  train = dict(split.train)
  for identity in chosen.tolist():
    reference = split.reference[identity]
    train[identity], again = split_photos(
        identity, arrays.photo_id[arrays.identity == identity], reference_photos=len(reference),
        min_train_photos=1, max_train_photos=max_train_photos, seed=split.seed)
    if not np.array_equal(again, reference):
      raise ValueError(f"identity {identity}: the split was not made from these photos")
  return IdentitySplit(seed=split.seed, groups=split.groups, train=train,
                       reference=split.reference)


def make_split(arrays: FaceArrays, *, seed: int, members: int, non_members: int, shadow: int = 0,
               encoder: int | None = None, reference_photos: int = 5, min_train_photos: int = 1,
               max_train_photos: int | None = None) -> IdentitySplit:
  """Assigns identities to roles at random (seeded) and splits each target's photos.

  Only identities with at least `reference_photos + min_train_photos` photos can be targets;
  the others, and every identity left over, train the encoder (`encoder` caps their number).
  """
  ids, counts = np.unique(arrays.identity, return_counts=True)
  eligible = ids[counts >= reference_photos + min_train_photos]
  wanted = members + non_members + shadow
  if min(members, non_members, shadow) < 0:
    raise ValueError("group sizes must be non-negative")
  if members == 0:
    raise ValueError("the split has no member identities: the target generator needs members")
  if wanted > len(eligible):
    raise ValueError(
        f"asked for {members} members + {non_members} non-members + {shadow} shadow identities, "
        f"but only {len(eligible)} of {len(ids)} identities have the "
        f"{reference_photos + min_train_photos} photos needed to split")
  rng = np.random.default_rng([seed, 2**20])
  targets = rng.permutation(eligible)[:wanted]
  rest = rng.permutation(np.setdiff1d(ids, targets))
  if encoder is not None:
    rest = rest[:encoder]
  groups = {"members": targets[:members], "non_members": targets[members:members + non_members],
            "shadow": targets[members + non_members:], "encoder": rest}
  groups = {g: np.sort(v).astype(np.int64) for g, v in groups.items()}
  order = np.argsort(arrays.identity, kind="stable")
  starts = np.searchsorted(arrays.identity[order], ids)
  photos_of = {int(i): arrays.photo_id[order[s:s + c]] for i, s, c in zip(ids, starts, counts)}
  train, reference = {}, {}
  for identity in targets.tolist():
    train[identity], reference[identity] = split_photos(
        identity, photos_of[identity], reference_photos=reference_photos,
        min_train_photos=min_train_photos, max_train_photos=max_train_photos, seed=seed)
  for identity in groups["encoder"].tolist():
    train[identity], reference[identity] = np.sort(photos_of[identity]), np.zeros((0,), np.int64)
  return IdentitySplit(seed=seed, groups=groups, train=train, reference=reference)
