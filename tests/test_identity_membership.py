"""Identity membership attack: streamed evidence equals a brute-force computation."""

import numpy as np
import pytest

from gmia.attacks import identity_membership as im
from tests.multidevice import run_with_devices


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _setup(seed=0, dim=16, members=4, non_members=3, photos=3, samples=50):
  rng = np.random.default_rng(seed)
  centres = _unit(rng.normal(size=(members + non_members, dim)))
  photo_identity = np.repeat(np.arange(members + non_members), photos) + 100
  noise = lambda n, scale: scale / np.sqrt(dim) * rng.normal(size=(n, dim))
  ref_embeddings = _unit(centres[photo_identity - 100] + noise(len(photo_identity), 0.6))
  # Generated samples: half near member centres (a leaky generator), half random.
  near = centres[rng.integers(0, members, samples // 2)]
  sample_embeddings = _unit(np.concatenate([near + noise(len(near), 0.8),
                                            rng.normal(size=(samples - samples // 2, dim))]))
  groups = {**{str(i + 100): "member" for i in range(members)},
            **{str(i + 100): "population" for i in range(members, members + non_members)}}
  refs = im.make_references(ref_embeddings, photo_identity, np.arange(len(photo_identity)) + 7,
                            groups)
  return refs, sample_embeddings


def _logsumexp(x, axis):
  top = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def _ids(samples, start=0):
  return np.arange(start, start + len(samples))


def test_streamed_evidence_equals_brute_force():
  refs, samples = _setup()
  threshold = 0.3
  evidence = im.Evidence.empty(refs.num_identities, 4, len(refs.identity))
  views = []
  for start in range(0, len(samples), 17):  # Chunks that do not divide 50.
    evidence, view = im.observe(evidence, _ids(samples[start:start + 17], start),
                                samples[start:start + 17], refs, threshold=threshold,
                                chunk_size=8)
    views.append(view)
  sim = samples @ refs.embeddings.T  # [S, R] brute force.
  per_identity = np.stack([sim[:, refs.identity == i].max(axis=1)
                           for i in range(refs.num_identities)], axis=1)  # [S, I]
  np.testing.assert_allclose(evidence.best, per_identity.max(axis=0), atol=1e-5)
  np.testing.assert_array_equal(evidence.best_sample, per_identity.argmax(axis=0))
  for i in range(refs.num_identities):
    assert refs.identity[evidence.best_photo[i]] == i
    np.testing.assert_allclose(sim[evidence.best_sample[i], evidence.best_photo[i]],
                               evidence.best[i], atol=1e-5)
  np.testing.assert_allclose(im.scores(evidence, "topk_mean"),
                             -np.sort(-per_identity, axis=0)[:4].mean(axis=0), atol=1e-5)
  np.testing.assert_array_equal(im.scores(evidence, "count"), (per_identity > threshold).sum(axis=0))
  assert int(evidence.num_samples) == 50
  # Per photo: its best sample and its kernel sums, summed over the chunks by logaddexp.
  np.testing.assert_allclose(evidence.photo_best, sim.max(axis=0), atol=1e-5)
  exponents = np.asarray(im.KAPPAS)[:, None, None] * sim.astype(np.float64)[None]  # [G, S, R]
  np.testing.assert_allclose(evidence.log_kernel, _logsumexp(exponents, axis=1), rtol=1e-5)
  view_identity = np.concatenate([v.identity for v in views])
  np.testing.assert_array_equal(view_identity[:, 0], per_identity.argmax(axis=1))
  np.testing.assert_allclose(np.concatenate([v.similarity for v in views])[:, 0],
                             per_identity.max(axis=1), atol=1e-5)


def test_density_variant_against_numpy():
  """The density score from the streamed state equals log p_G - log p_R computed directly: vMF
  kernel densities with the log normaliser, the population's density at a photo without its
  own person's photos, the mean over the person's photos."""
  from gmia.attacks import density_ratio
  refs, samples = _setup(samples=60)
  evidence, _ = im.observe(im.Evidence.empty(refs.num_identities, 4, len(refs.identity)),
                           _ids(samples), samples, refs, threshold=0.3)
  found = im.density(evidence, refs, held_out=samples[:40])
  assert found.kappa_samples in im.KAPPAS and found.kappa_population in im.KAPPAS
  dim = samples.shape[1]
  sim = refs.embeddings.astype(np.float64) @ samples.T.astype(np.float64)
  log_c = lambda kappa: float(density_ratio.log_vmf_normalizer(kappa, dim))
  log_g = (_logsumexp(found.kappa_samples * sim, axis=1) - np.log(sim.shape[1])
           + log_c(found.kappa_samples))
  population = refs.in_population[refs.identity]
  log_r = []
  for r in range(len(refs.identity)):
    others = refs.embeddings[population & (refs.identity != refs.identity[r])]
    exponents = found.kappa_population * (others.astype(np.float64) @ refs.embeddings[r])
    log_r.append(_logsumexp(exponents, axis=0) - np.log(len(others)))
  log_r = np.array(log_r)
  log_r += log_c(found.kappa_population)
  np.testing.assert_allclose(found.photo, log_g - log_r, rtol=1e-5, atol=1e-5)
  person = np.array([found.photo[refs.identity == i].mean() for i in range(refs.num_identities)])
  np.testing.assert_allclose(im.scores(evidence, "density", found), person, rtol=1e-6)
  # The leaky half of the samples sits near the members: they score above the population.
  assert person[refs.is_member].min() > person[refs.in_population].max()


def test_leaky_generator_scores_members_higher():
  refs, samples = _setup(dim=64, samples=400)
  evidence, _ = im.observe(im.Evidence.empty(refs.num_identities, 5, len(refs.identity)), _ids(samples), samples,
                           refs, threshold=0.5)
  best = im.scores(evidence, "best")
  assert best[refs.is_member].min() > best[~refs.is_member].max()


def test_evidence_round_trips_through_arrays():
  refs, samples = _setup()
  evidence, _ = im.observe(im.Evidence.empty(refs.num_identities, 2, len(refs.identity)), _ids(samples), samples,
                           refs, threshold=0.1)
  again = im.Evidence.from_arrays(evidence.to_arrays())
  for name, value in evidence.to_arrays().items():
    np.testing.assert_array_equal(getattr(again, name), value)


def test_impostor_threshold_matches_the_false_accept_rate():
  refs, _ = _setup(photos=20)
  threshold = im.impostor_threshold(refs.embeddings, refs.identity, 0.05, max_pairs=200_000)
  sim = refs.embeddings @ refs.embeddings.T
  impostor = sim[refs.identity[:, None] != refs.identity[None, :]]
  assert abs((impostor > threshold).mean() - 0.05) < 0.01


def test_bad_input_is_named():
  refs, samples = _setup()
  with pytest.raises(ValueError, match="sample embeddings must be"):
    im.observe(im.Evidence.empty(refs.num_identities, 2, len(refs.identity)), _ids(samples), samples[:, :5], refs,
               threshold=0.0)
  with pytest.raises(ValueError, match="unknown score variant"):
    im.scores(im.Evidence.empty(3, 2, 3), "median")
  with pytest.raises(ValueError, match="needs at least 2 samples"):
    im.scores(im.Evidence.empty(3, 2, 3), "topk_mean")
  with pytest.raises(ValueError, match="unknown group"):
    im.make_references(samples[:3], np.array([1, 1, 1]), np.arange(3), {"1": "non_member"})
  with pytest.raises(ValueError, match="without reference photos"):
    im.make_references(samples[:3], np.array([1, 1, 1]), np.arange(3),
                       {"1": "member", "2": "population"})
  with pytest.raises(ValueError, match="people in no group"):
    im.make_references(samples[:3], np.array([1, 1, 3]), np.arange(3), {"1": "member"})
  with pytest.raises(ValueError, match="false_accept_rate"):
    im.impostor_threshold(refs.embeddings, refs.identity, 1.5)


def test_stream_resumes_and_extends_to_the_same_result(tmp_path):
  refs, samples = _setup(samples=60)
  # Sample 7 has no usable face: left out, never counted.
  embed = lambda indices: (indices[indices != 7], samples[indices[indices != 7]])
  options = dict(threshold=0.3, k=3, fingerprint={"seed": 1})
  whole, view = im.stream(embed, 60, 20, refs, state_dir=str(tmp_path / "a"), **options)
  assert int(whole.num_samples) == 59 and 7 not in view.sample
  np.testing.assert_array_equal(view.sample, np.delete(np.arange(60), 7))

  class Killed(Exception):
    pass

  def kill_after_two(done, _):
    if done == 40:
      raise Killed
  with pytest.raises(Killed):
    im.stream(embed, 60, 20, refs, state_dir=str(tmp_path / "b"), on_chunk=kill_after_two,
              **options)
  seen = []
  resumed, resumed_view = im.stream(embed, 60, 20, refs, state_dir=str(tmp_path / "b"),
                                    on_chunk=lambda done, _: seen.append(done), **options)
  assert seen == [60]  # Only the missing chunk was computed.
  for name, value in whole.to_arrays().items():
    np.testing.assert_array_equal(getattr(resumed, name), value)
  np.testing.assert_array_equal(resumed_view.identity, view.identity)
  # 25 samples in chunks of 20, then extended to 60 in chunks of 7: the same evidence (the kernel
  # sums up to the rounding of float32 sums taken over other chunks).
  im.stream(embed, 25, 20, refs, state_dir=str(tmp_path / "c"), **options)
  extended, extended_view = im.stream(embed, 60, 7, refs, state_dir=str(tmp_path / "c"),
                                      **options)
  for name, value in whole.to_arrays().items():
    if name == "log_kernel":
      np.testing.assert_allclose(extended.log_kernel, value, rtol=1e-6)
    else:
      np.testing.assert_array_equal(getattr(extended, name), value, err_msg=name)
  np.testing.assert_array_equal(extended_view.sample, view.sample)
  with pytest.raises(ValueError, match="num_samples=30 asks for fewer"):
    im.stream(embed, 30, 20, refs, state_dir=str(tmp_path / "c"), **options)
  with pytest.raises(ValueError, match="another attack configuration"):
    im.stream(embed, 60, 20, refs, state_dir=str(tmp_path / "b"), threshold=0.3, k=3,
              fingerprint={"seed": 2})


def test_p_values_against_the_population():
  population = np.array([0.1, 0.2, 0.3, 0.4])
  assert im.empirical_p_value(0.5, population) == pytest.approx(1 / 5)
  assert im.empirical_p_value(0.3, population) == pytest.approx(3 / 5)
  assert im.empirical_p_value(0.0, population) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="population"):
    im.empirical_p_value(0.5, np.array([]))
  scores = np.array([0.35, 0.1, 0.2, 0.3, 0.4, 0.05])
  in_population = np.array([False, True, True, True, True, False])
  want = [im.empirical_p_value(s, scores[in_population & (np.arange(6) != i)])
          for i, s in enumerate(scores)]
  np.testing.assert_allclose(im.leave_one_out_p_values(scores, in_population), want)


_SHARDED_CODE = """
import numpy as np
from tests.test_identity_membership import _setup
from gmia import parallel
from gmia.attacks import identity_membership as im
from tests.multidevice import run_with_devices
refs, samples = _setup(samples=45)
mesh = parallel.make_mesh() if {sharded} else None
evidence, view = im.observe(im.Evidence.empty(refs.num_identities, 4, len(refs.identity)), np.arange(45), samples,
                            refs, threshold=0.3, chunk_size=8, mesh=mesh)
RESULT = {{**evidence.to_arrays(), "view_identity": view.identity, "view_similarity": view.similarity}}
"""


def test_eight_devices_give_the_single_device_evidence():
  single = run_with_devices(1, _SHARDED_CODE.format(sharded=False))
  sharded = run_with_devices(8, _SHARDED_CODE.format(sharded=True))
  for name, value in single.items():
    np.testing.assert_allclose(sharded[name], value, atol=1e-5, err_msg=name)
