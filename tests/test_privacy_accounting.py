"""Privacy accounting: epsilon against dp-accounting called directly, calibration to a target,
the metadata's recomputation, and the configs refused before training."""

import json
import math

import dp_accounting
import pytest

from gmia.privacy import accounting


def _config(**fields):
  config = accounting.default_config()
  config.update(enabled=True, **fields)
  return config


def _direct_epsilon(make_accountant, q, sigma, single, paired, delta, truncated=None):
  """dp-accounting, step by step: `single` sampled Gaussian steps and `paired` steps of two
  Gaussian releases on one sample, i.e. the sampled Gaussian at sigma / sqrt(2)."""
  def step(s):
    if truncated is None:
      return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s))
    people, limit = truncated
    return dp_accounting.TruncatedSubsampledGaussianDpEvent(people, q, limit, s)
  acc = make_accountant()
  acc.compose(step(sigma), single)
  acc.compose(step(sigma / math.sqrt(2)), paired)
  return acc.get_epsilon(delta)


@pytest.mark.parametrize("name,make", [("rdp", dp_accounting.rdp.RdpAccountant),
                                       ("pld", dp_accounting.pld.PLDAccountant)])
def test_epsilon_equals_dp_accounting_called_directly(name, make):
  config = _config(noise_multiplier=1.3, people_per_step=20.0, accountant=name,
                   target_epsilon=100.0, delta=1e-6)
  meta = accounting.plan(config, people=400, steps=300, r1_steps=19)
  want = _direct_epsilon(make, 20 / 400, 1.3, 300 - 19, 19, 1e-6)
  assert meta["epsilon"] == pytest.approx(want, rel=1e-9)
  assert meta["steps"] == 319 and meta["r1_steps"] == 19 and meta["sampling_rate"] == 0.05
  assert accounting.epsilon_from_metadata(json.loads(json.dumps(meta, allow_nan=False))) == (
      pytest.approx(want, rel=1e-9))


def test_truncated_steps_are_composed_by_pld():
  config = _config(noise_multiplier=2.0, people_per_step=8.0, max_people_per_step=12,
                   target_epsilon=100.0)
  meta = accounting.plan(config, people=25, steps=30, r1_steps=3)
  want = _direct_epsilon(dp_accounting.pld.PLDAccountant, 8 / 25, 2.0, 27, 3, 1e-5,
                         truncated=(25, 12))
  assert meta["max_people_per_step"] == 12
  assert meta["epsilon"] == pytest.approx(want, rel=1e-9)
  assert accounting.epsilon_from_metadata(meta) == pytest.approx(want, rel=1e-9)
  # Truncation keeps fewer people than were sampled: never cheaper than no truncation.
  untruncated = _direct_epsilon(dp_accounting.pld.PLDAccountant, 8 / 25, 2.0, 27, 3, 1e-5)
  assert meta["epsilon"] >= untruncated
  # A limit of everyone (or more) is no truncation, which RDP composes too.
  config.update(max_people_per_step=25, accountant="rdp")
  assert accounting.plan(config, people=25, steps=30, r1_steps=3)["max_people_per_step"] is None


def test_two_releases_on_one_sample_compose_as_one_at_sigma_over_sqrt2():
  """The identity behind the R1 steps' accounting, where dp-accounting can check it: without
  sampling, two Gaussian releases of multiplier sigma are one of multiplier sigma / sqrt(2)."""
  for sigma in (0.7, 2.0, 8.0):
    two = dp_accounting.pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(sigma), 2)
    one = dp_accounting.pld.PLDAccountant().compose(
        dp_accounting.GaussianDpEvent(sigma / math.sqrt(2)))
    assert two.get_epsilon(1e-5) == pytest.approx(one.get_epsilon(1e-5), rel=1e-3)


@pytest.mark.parametrize("accountant_name", ["rdp", "pld"])
def test_calibration_finds_the_smallest_noise_within_target(accountant_name):
  make = {"rdp": dp_accounting.rdp.RdpAccountant, "pld": dp_accounting.pld.PLDAccountant}[
      accountant_name]
  config = _config(target_epsilon=3.0, people_per_step=10.0, accountant=accountant_name)
  meta = accounting.plan(config, people=100, steps=60, r1_steps=4)
  sigma = meta["noise_multiplier"]
  spent = _direct_epsilon(make, 0.1, sigma, 56, 4, 1e-5)
  assert meta["epsilon"] == pytest.approx(spent, rel=1e-9) and spent <= 3.0
  tighter = _direct_epsilon(make, 0.1, sigma - 2 * accounting.CALIBRATION_TOLERANCE, 56, 4, 1e-5)
  assert tighter > 3.0
  assert meta["target_epsilon"] == 3.0 and meta["accountant"] == accountant_name
  assert "PoissonSampledDpEvent" in meta["dp_event"]


def test_configs_over_budget_or_unreachable_are_refused():
  with pytest.raises(ValueError, match="budget exceeded.*epsilon .* > privacy.target_epsilon=1"):
    accounting.plan(_config(noise_multiplier=0.5, target_epsilon=1.0), people=50, steps=100)
  with pytest.raises(ValueError, match="budget exceeded"):  # No noise: epsilon is infinite.
    accounting.plan(_config(noise_multiplier=0.0), people=50, steps=100)
  # The noise a run started with, kept by a resumed run, checked against more steps.
  first = accounting.plan(_config(target_epsilon=2.0, accountant="rdp"), people=50, steps=100)
  with pytest.raises(ValueError, match="budget exceeded"):
    accounting.plan(_config(target_epsilon=2.0, accountant="rdp"), people=50, steps=200,
                    noise_multiplier=first["noise_multiplier"])
  with pytest.raises(ValueError, match="out of reach"):
    accounting.plan(_config(target_epsilon=1e-12, delta=1e-300, accountant="rdp",
                            people_per_step=50.0), people=50, steps=100)
  with pytest.raises(ValueError, match="need accountant 'pld'"):
    accounting.plan(_config(accountant="rdp", max_people_per_step=10), people=50, steps=10)


@pytest.mark.parametrize("field,value,message", [
    ("delta", 0.05, "delta must be in"), ("people_per_step", 60.0, "people_per_step"),
    ("accountant", "moments", "accountant must be one of"), ("clip_norm", math.inf, "clip_norm"),
    ("target_epsilon", 0.0, "target_epsilon"), ("max_people_per_step", 0, "max_people_per_step"),
    ("max_photos_per_person", 0, "max_photos_per_person"),
    ("noise_multiplier", -0.5, "noise_multiplier")])
def test_bad_fields_are_named(field, value, message):
  config = _config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    accounting.plan(config, people=50, steps=10)


def test_metadata_without_its_fields_is_a_clear_error():
  with pytest.raises(ValueError, match="lacks 'people'"):
    accounting.epsilon_from_metadata({"delta": 1e-5})
