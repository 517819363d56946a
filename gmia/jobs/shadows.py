"""Shadow generators: the target's recipe trained again on people the attacker holds, so that every
tested person's score has a distribution under generators that saw them and under generators that
did not (the likelihood ratio of gmia.attacks.likelihood_ratio).

Shadow k trains, with the target's generator config, on:
  - `people_per_shadow` identities drawn (seeded by (seed, k)) from the attacker's pool: the
    split's shadow and encoder identities, never a tested person, with all their training photos;
  - online: the reference photos of half of the tested people (members and non-members of the
    split), a balanced design in which every tested person is in exactly half of the shadows;
    offline: none of them, so every shadow is an OUT shadow of everybody.
Every shadow is then attacked like the target: the same attack settings, matcher and reference
photos (the split's), so its scores.csv scores the same people.

Workdir:
  shadows.json           the design: per shadow, its pool people and the tested people it saw;
  shadow_<k>/split.json  its training split (what its generator may train on);
  shadow_<k>/gan/ (or diffusion/: the target's family), shadow_<k>/attack/  stages
                         (gmia.jobs.stages): a killed run resumes.
A shadow generator whose workdir trained on other people than the design says is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import ml_collections
import numpy as np

from gmia import files
from gmia.attacks.calibration import AttackScores, ShadowScores, read_scores
from gmia.data import run_data
from gmia.data.split import GROUPS, IdentitySplit
from gmia.jobs import generators, membership
from gmia.jobs.stages import run_stage

DESIGN_FILE = "shadows.json"
POOL_GROUPS = ("shadow", "encoder")
TESTED_GROUPS = ("members", "non_members")


def default_config() -> ml_collections.ConfigDict:
  """The shadow block of a job that trains shadows (see `train_and_attack`)."""
  return ml_collections.ConfigDict({
      "num_shadows": 4,          # K generators (9 min each at the main job's recipe on 2 cores).
      "online": True,            # Tested people's reference photos join half of the shadows.
      "people_per_shadow": -1,   # Pool people per shadow; -1: as many as the target's members.
      "seed": 0,
  })


@dataclasses.dataclass(frozen=True)
class Design:
  """pool: i64[K, M] the pool people of each shadow; tested: i64[P] the tested people;
  seen: bool[K, P] whether shadow k trained on tested person p's reference photos."""
  pool: np.ndarray
  tested: np.ndarray
  seen: np.ndarray

  def to_json(self) -> dict:
    return {"pool": self.pool.tolist(), "tested": self.tested.tolist(),
            "seen": self.seen.astype(int).tolist()}


def design(split: IdentitySplit, config: ml_collections.ConfigDict) -> Design:
  """Which people each shadow trains on (see the module docstring), seeded by config.seed."""
  if config.num_shadows < 2 or (config.online and config.num_shadows % 2):
    raise ValueError(f"num_shadows must be at least 2 (and even when online), got "
                     f"{config.num_shadows}")
  pool = np.concatenate([split.identities(g) for g in POOL_GROUPS])
  pool = pool[[len(split.train[int(i)]) > 0 for i in pool]]
  per_shadow = (len(split.identities("members")) if config.people_per_shadow < 0
                else config.people_per_shadow)
  if not 0 < per_shadow <= len(pool):
    raise ValueError(f"people_per_shadow={per_shadow} but the attacker's pool (the split's "
                     f"{' and '.join(POOL_GROUPS)} identities) holds {len(pool)} people")
  tested = np.concatenate([split.identities(g) for g in TESTED_GROUPS])
  rng = np.random.default_rng([config.seed, 2**23])
  chosen = np.stack([np.sort(rng.choice(pool, per_shadow, replace=False))
                     for _ in range(config.num_shadows)])
  half = np.arange(config.num_shadows) < config.num_shadows // 2
  seen = (np.stack([rng.permutation(half) for _ in tested], axis=1) if config.online
          else np.zeros((config.num_shadows, len(tested)), bool))
  return Design(chosen, tested, seen)


def shadow_split(split: IdentitySplit, plan: Design, k: int) -> IdentitySplit:
  """Shadow k's training split: its pool people (training photos) and the tested people it sees
  (their reference photos, as training photos), all in group "members"."""
  seen = plan.tested[plan.seen[k]]
  members = np.sort(np.concatenate([plan.pool[k], seen])).astype(np.int64)
  train = {int(i): split.train[int(i)] for i in plan.pool[k]}
  train.update({int(i): split.reference[int(i)] for i in seen})
  empty = np.zeros((0,), np.int64)
  groups = {g: (members if g == "members" else empty) for g in GROUPS}
  return IdentitySplit(seed=split.seed, groups=groups, train=train,
                       reference={i: empty for i in train})


def _pinned_design(directory: str, plan: Design) -> None:
  path = os.path.join(directory, DESIGN_FILE)
  if os.path.exists(path):
    if files.read_json(path) != plan.to_json():
      raise ValueError(f"{path} holds another shadow design than the config asks for: use a "
                       "fresh workdir")
  else:
    files.write_json(path, plan.to_json())


def _check_trained_on(generator_dir: str, expected: IdentitySplit) -> None:
  """Refuses a shadow generator whose workdir trained on another split than its design's."""
  path = os.path.join(generator_dir, run_data.SPLIT_FILE)
  if os.path.exists(path) and IdentitySplit.load(path).to_json() != expected.to_json():
    raise ValueError(f"the shadow generator in {generator_dir} was trained on other people than "
                     "its design says: remove it or use a fresh workdir")


def train_and_attack(directory: str, *, split: IdentitySplit, split_path: str,
                     data: ml_collections.ConfigDict, family: str,
                     generator: ml_collections.ConfigDict, attack: ml_collections.ConfigDict,
                     shadows: ml_collections.ConfigDict) -> dict[str, float]:
  """Trains and attacks the shadows of `split` (its file: split_path) in `directory`, each a
  cached stage; `generator` (a trainer config of `family`, gmia.jobs.generators) and `attack`
  are the target's (the attack's matcher set). Returns {stage: wall seconds}."""
  plan = design(split, shadows)
  os.makedirs(directory, exist_ok=True)
  _pinned_design(directory, plan)
  seconds = {}
  for k in range(len(plan.pool)):
    root = os.path.join(directory, f"shadow_{k}")
    trained_split = shadow_split(split, plan, k)
    path = os.path.join(root, run_data.SPLIT_FILE)
    if not os.path.exists(path):
      trained_split.save(path)
    generator_dir, attack_dir = os.path.join(root, family), os.path.join(root, "attack")
    _check_trained_on(generator_dir, trained_split)
    trainer_config = copy.deepcopy(generator)
    trainer_config.data = copy.deepcopy(data)
    trainer_config.data.split.path = path
    trainer_config.train_group = "members"
    seconds[f"shadow_{k}_{family}"] = run_stage(
        generator_dir, lambda: generators.train(family, trainer_config, generator_dir),
        f"shadow {k} {family}")
    attack_config = copy.deepcopy(attack)
    attack_config.update(generator="gmia:" + generator_dir, split_path=split_path,
                         title=f"shadow generator {k}")
    seconds[f"shadow_{k}_attack"] = run_stage(
        attack_dir, lambda: membership.run(attack_config, attack_dir), f"shadow {k} attack")
  return seconds


def read_shadows(directory: str, target: AttackScores) -> ShadowScores:
  """The scores of every shadow in `directory`, aligned to `target`'s people."""
  plan = files.read_json(os.path.join(directory, DESIGN_FILE))
  tested = [str(i) for i in plan["tested"]]
  column = {name: i for i, name in enumerate(tested)}
  missing = [name for name in target.identity.tolist() if name not in column]
  if missing:
    raise ValueError(f"the shadows in {directory} were designed for other people (e.g. identity "
                     f"{missing[0]} of the target's attack is not among them)")
  order = np.array([column[name] for name in target.identity.tolist()])
  per_shadow = [read_scores(os.path.join(directory, f"shadow_{k}", "attack")).aligned_to(target)
                for k in range(len(plan["pool"]))]
  scores = {v: np.stack([s.scores[v] for s in per_shadow]) for v in target.scores}
  return ShadowScores(scores, np.asarray(plan["seen"], bool)[:, order])
