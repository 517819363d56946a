"""Shadow generators: the design (who each shadow sees), training and attacking them as stages
that resume after a kill, refusing a shadow trained on other people, and their scores read back
in a target attack's order."""

import os

import ml_collections
import numpy as np
import pytest

from gmia.attacks import calibration
from gmia.data.split import IdentitySplit
from gmia.gan import trainer as gan_trainer
from gmia.jobs import membership, shadows
from train.configs import gan_tiny


def _settings(**fields):
  config = shadows.default_config()
  config.update(fields)
  return config


def _split(models):
  return IdentitySplit.load(os.path.join(models[0], "split.json"))


def test_the_design_is_balanced_and_keeps_tested_people_out_of_the_pool(models):
  split = _split(models)
  plan = shadows.design(split, _settings(num_shadows=4, people_per_shadow=3))
  tested = np.concatenate([split.identities("members"), split.identities("non_members")])
  np.testing.assert_array_equal(plan.tested, tested)
  assert plan.pool.shape == (4, 3) and not np.isin(plan.pool, tested).any()
  assert np.isin(plan.pool, split.identities("encoder")).all()
  np.testing.assert_array_equal(plan.seen.sum(axis=0), 2)  # Each person in exactly half.
  assert len({tuple(column) for column in plan.seen.T.tolist()}) > 1  # Not one pattern for all.
  again = shadows.design(split, _settings(num_shadows=4, people_per_shadow=3))
  np.testing.assert_array_equal(again.seen, plan.seen)
  other = shadows.design(split, _settings(num_shadows=4, people_per_shadow=3, seed=1))
  assert not np.array_equal(other.seen, plan.seen)
  offline = shadows.design(split, _settings(num_shadows=3, online=False, people_per_shadow=3))
  assert not offline.seen.any()
  # Shadow 0 trains on its pool people's training photos and its tested people's references.
  trained = shadows.shadow_split(split, plan, 0)
  seen = plan.tested[plan.seen[0]]
  assert set(trained.identities("members").tolist()) == set(plan.pool[0]) | set(seen)
  for person in seen.tolist():
    np.testing.assert_array_equal(trained.train[person], split.reference[person])
  for person in plan.pool[0].tolist():
    np.testing.assert_array_equal(trained.train[person], split.train[person])
  with pytest.raises(ValueError, match="even when online"):
    shadows.design(split, _settings(num_shadows=3))
  with pytest.raises(ValueError, match="holds 6 people"):
    shadows.design(split, _settings(people_per_shadow=7))


def test_shadows_train_and_attack_as_stages_that_resume(models, tmp_path, monkeypatch):
  gan_workdir, encoder = models
  split, split_path = _split(models), os.path.join(gan_workdir, "split.json")
  gan = gan_tiny.get_config()
  gan.update(num_steps=1, checkpoint_every=1, log_every=1)
  data = ml_collections.ConfigDict(gan.data.to_dict())
  data.data_dir = os.path.join(os.path.dirname(gan_workdir), "data")
  attack = membership.default_config()
  attack.matcher.path = encoder
  attack.update(num_samples=16, chunk_size=16, topk=2, bootstrap_resamples=20)
  settings = _settings(num_shadows=2, people_per_shadow=2)
  trainings = []
  original = gan_trainer.train_and_evaluate

  def killed_after_one(config, workdir):
    trainings.append(workdir)
    if len(trainings) == 2:
      raise KeyboardInterrupt  # The job is killed while it trains the second shadow.
    return original(config, workdir)

  monkeypatch.setattr(gan_trainer, "train_and_evaluate", killed_after_one)
  arguments = dict(split=split, split_path=split_path, data=data, family="gan", generator=gan,
                   attack=attack, shadows=settings)
  with pytest.raises(KeyboardInterrupt):
    shadows.train_and_attack(str(tmp_path), **arguments)
  trainings.clear()
  monkeypatch.setattr(gan_trainer, "train_and_evaluate",
                      lambda config, workdir: (trainings.append(workdir),
                                               original(config, workdir))[1])
  seconds = shadows.train_and_attack(str(tmp_path), **arguments)
  assert trainings == [str(tmp_path / "shadow_1" / "gan")]  # Shadow 0 was not trained again.
  assert set(seconds) == {f"shadow_{k}_{stage}" for k in (0, 1) for stage in ("gan", "attack")}
  trained = IdentitySplit.load(str(tmp_path / "shadow_1" / "gan" / "split.json"))
  plan = shadows.design(split, settings)
  assert trained.to_json() == shadows.shadow_split(split, plan, 1).to_json()

  target = calibration.read_scores(str(tmp_path / "shadow_0" / "attack"))
  read = shadows.read_shadows(str(tmp_path), target)
  order = [plan.tested.tolist().index(int(name)) for name in target.identity]
  np.testing.assert_array_equal(read.seen, plan.seen[:, order])
  assert set(read.scores) == set(target.scores)
  np.testing.assert_array_equal(read.scores["best"][0], target.scores["best"])
  assert read.scores["best"].shape == (2, len(target.identity))

  # A shadow generator trained on other people than its design says is refused.
  other = shadows.shadow_split(split, plan, 0)
  other.save(str(tmp_path / "shadow_1" / "gan" / "split.json"))
  with pytest.raises(ValueError, match="trained on other people than its design says"):
    shadows.train_and_attack(str(tmp_path), **arguments)
  # So is a workdir holding another design.
  with pytest.raises(ValueError, match="another shadow design"):
    shadows.train_and_attack(str(tmp_path), **{**arguments, "shadows": _settings(
        num_shadows=2, people_per_shadow=2, seed=5)})
