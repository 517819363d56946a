"""Identity splits: disjoint roles, reference photos never trained on, determinism, errors."""

import numpy as np
import pytest

from gmia.data import run_data
from gmia.data.arrays import FaceArrays
from gmia.data.split import GROUPS, IdentitySplit, make_split, overrepresent, split_photos


def _arrays(photos_per_identity):
  identity = np.repeat(np.arange(len(photos_per_identity)), photos_per_identity).astype(np.int64)
  photo_id = np.random.default_rng(0).permutation(len(identity)).astype(np.int64) + 1000
  images = np.zeros((len(identity), 4, 4, 3), np.uint8)
  return FaceArrays(images, identity, photo_id)


def test_groups_and_photos_are_disjoint_and_complete():
  arrays = _arrays([8] * 30 + [2] * 5)
  split = make_split(arrays, seed=1, members=10, non_members=8, shadow=4, reference_photos=3)
  sets = {g: set(split.identities(g).tolist()) for g in GROUPS}
  for i, a in enumerate(GROUPS):
    for b in GROUPS[i + 1:]:
      assert not sets[a] & sets[b], (a, b)
  assert [len(sets[g]) for g in ("members", "non_members", "shadow")] == [10, 8, 4]
  assert set().union(*sets.values()) == set(range(35))
  assert sets["encoder"] >= set(range(30, 35))  # Too few photos to be a target.
  owner = dict(zip(arrays.photo_id.tolist(), arrays.identity.tolist()))
  for group in ("members", "non_members", "shadow"):
    train, reference = split.train_photos(group), split.reference_photos(group)
    assert not set(train.tolist()) & set(reference.tolist())
    assert len(reference) == 3 * len(sets[group]) and len(train) == 5 * len(sets[group])
    assert {owner[p] for p in np.concatenate([train, reference]).tolist()} == sets[group]
  assert len(split.reference_photos("encoder")) == 0


def test_seeded_and_reproducible():
  arrays = _arrays([6] * 20)
  a = make_split(arrays, seed=4, members=5, non_members=5)
  b = make_split(arrays, seed=4, members=5, non_members=5)
  c = make_split(arrays, seed=5, members=5, non_members=5)
  assert a.to_json() == b.to_json()
  assert a.to_json() != c.to_json()


def test_json_round_trip(tmp_path):
  split = make_split(_arrays([6] * 12), seed=0, members=3, non_members=3, shadow=2)
  split.save(str(tmp_path / "split.json"))
  assert IdentitySplit.load(str(tmp_path / "split.json")).to_json() == split.to_json()


def test_max_train_photos_caps_training_only():
  split = make_split(_arrays([10] * 6), seed=0, members=2, non_members=2, reference_photos=2,
                     max_train_photos=3)
  assert len(split.train_photos("members")) == 6 and len(split.reference_photos("members")) == 4


def test_too_few_photos_is_named():
  with pytest.raises(ValueError, match="identity 7 has 3 photos; splitting needs at least 6"):
    split_photos(7, np.arange(3), reference_photos=5, min_train_photos=1, max_train_photos=None,
                 seed=0)
  with pytest.raises(ValueError, match="only 4 of 6 identities"):
    make_split(_arrays([9, 9, 9, 9, 2, 2]), seed=0, members=3, non_members=2)


def test_no_members_is_an_error():
  with pytest.raises(ValueError, match="no member identities"):
    make_split(_arrays([6] * 4), seed=0, members=0, non_members=2)


def test_corrupt_split_files(tmp_path):
  path = tmp_path / "split.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    IdentitySplit.load(str(path))
  path.write_text('{"format": "something else"}')
  with pytest.raises(ValueError, match="not a gmia identity split"):
    IdentitySplit.load(str(path))
  good = make_split(_arrays([6] * 4), seed=0, members=1, non_members=1).to_json()
  good["groups"]["encoder"].append(good["groups"]["members"][0])
  with pytest.raises(ValueError, match="is in both members and encoder"):
    IdentitySplit.from_json(good)


def test_run_pins_its_split(tmp_path):
  config = run_data.default_config()
  config.data_dir = str(tmp_path / "tfds")
  config.resolution, config.identities, config.photos = 32, 12, 7
  config.split.update(members=3, non_members=3, shadow=2)
  arrays, split = run_data.load_for_run(config, str(tmp_path / "run"))
  assert (tmp_path / "run" / "split.json").exists()
  _, again = run_data.load_for_run(config, str(tmp_path / "run"))
  assert again.to_json() == split.to_json()
  config.split.seed = 1
  with pytest.raises(ValueError, match="another identity split"):
    run_data.load_for_run(config, str(tmp_path / "run"))
  config.split.path = str(tmp_path / "run" / "split.json")
  reused = run_data.split_for(config, arrays)
  assert reused.to_json() == split.to_json()


def test_overrepresent_extends_chosen_members_only():
  arrays = _arrays([12] * 10)
  split = make_split(arrays, seed=3, members=4, non_members=3, reference_photos=2,
                     max_train_photos=2)
  more = overrepresent(split, arrays, count=2, max_train_photos=8)
  counts = {i: len(more.train[i]) for i in split.identities("members").tolist()}
  assert sorted(counts.values()) == [2, 2, 8, 8]
  owner = dict(zip(arrays.photo_id.tolist(), arrays.identity.tolist()))
  for identity in split.train:
    assert set(split.train[identity].tolist()) <= set(more.train[identity].tolist())
    assert {owner[p] for p in more.train[identity].tolist()} <= {identity}
    assert np.array_equal(more.reference[identity], split.reference[identity])
    if counts.get(identity, 2) == 2:
      assert np.array_equal(more.train[identity], split.train[identity])
  assert overrepresent(split, arrays, count=2, max_train_photos=None).train_photos(
      "members").size == 2 * 2 + 2 * 10
  with pytest.raises(ValueError, match="cannot over-represent 5 of 4 members"):
    overrepresent(split, arrays, count=5, max_train_photos=8)
