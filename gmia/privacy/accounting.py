"""Privacy accounting of person-level DP-SGD: the epsilon of a run, and the noise a target needs.

A DP training step samples each of `people` identities independently with probability q (the
sampling rate) and releases a sum of the sampled people's gradients, each person's clipped to a
norm C, plus Gaussian noise N(0, (sigma C)^2): a Poisson-sampled Gaussian mechanism
(dp-accounting's `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`). A step that keeps at most
`max_people_per_step` of the sampled people (a uniformly random subset) is a truncated one
(`TruncatedSubsampledGaussianDpEvent`, which only the PLD accountant composes).

Some GAN steps release twice from one sample: the discriminator's main update and its lazy R1
update, each clipped to its own norm and noised with the same multiplier. Two adaptively composed
Gaussian mechanisms of multiplier sigma are dominated by one of multiplier sigma / sqrt(2) (their
dominating pairs compose to N((1, 1), sigma^2 I) against N(0, sigma^2 I), whose privacy loss is
that of N(sqrt(2), sigma^2) against N(0, sigma^2); Dong, Roth and Su 2022), and Poisson
subsampling amplifies a mechanism through its dominating pair (Zhu, Dong and Wang 2022), so such
a step counts as the sampled event at sigma / sqrt(2): a little more than two single steps.

`dp_event` builds a run's composition, `epsilon` evaluates it, `calibrate` finds the smallest
sigma within a target epsilon, `plan` turns a `privacy` config block into the metadata a DP
trainer saves, and `epsilon_from_metadata` recomputes epsilon from that metadata alone.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Mapping
from typing import Any

import dp_accounting
import ml_collections

ACCOUNTANTS = ("pld", "rdp")
# Calibrated noise multipliers are within this of the smallest one that meets the target.
CALIBRATION_TOLERANCE = 1e-4


def default_config() -> ml_collections.ConfigDict:
  """The `privacy` block of a trainer's config: off by default."""
  return ml_collections.ConfigDict({
      "enabled": False,
      "target_epsilon": 10.0,
      "delta": 1e-5,             # Must be below 1 / people.
      "noise_multiplier": -1.0,  # -1: the smallest that meets target_epsilon (calibrated).
      "clip_norm": 1.0,          # Each person's gradient is clipped to this L2 norm.
      "people_per_step": 8.0,    # Expected people a step samples: rate = this / people.
      "max_people_per_step": -1,  # A step keeps at most this many (random); -1: no limit.
      "max_photos_per_person": 4,  # A sampled person's photos in a step (a random subset).
      "accountant": "pld",       # "pld" (tighter, composes truncated steps) or "rdp".
  })


def accountant(name: str) -> dp_accounting.PrivacyAccountant:
  """A fresh accountant: dp-accounting's PLD or RDP one with its defaults (add or remove one)."""
  if name == "pld":
    return dp_accounting.pld.PLDAccountant()
  if name == "rdp":
    return dp_accounting.rdp.RdpAccountant()
  raise ValueError(f"privacy.accountant must be one of {ACCOUNTANTS}, got {name!r}")


def dp_event(*, people: int, sampling_rate: float, noise_multiplier: float, steps: int,
             r1_steps: int = 0, max_people_per_step: int | None = None) -> dp_accounting.DpEvent:
  """The composition of a run: `steps` sampled steps, `r1_steps` of which release twice from
  their sample (counted at noise_multiplier / sqrt(2), see the module docstring).

  max_people_per_step: the truncation of each step's sample; None (or >= people) when none.
  """
  if not 0 <= r1_steps <= steps:
    raise ValueError(f"r1_steps ({r1_steps}) must be between 0 and steps ({steps})")

  def step(sigma: float) -> dp_accounting.DpEvent:
    if max_people_per_step is None or max_people_per_step >= people:
      return dp_accounting.PoissonSampledDpEvent(sampling_rate,
                                                 dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.TruncatedSubsampledGaussianDpEvent(
        dataset_size=people, sampling_probability=sampling_rate,
        truncated_batch_size=max_people_per_step, noise_multiplier=sigma)

  counts = ((noise_multiplier, steps - r1_steps), (noise_multiplier / math.sqrt(2), r1_steps))
  # The PLD accountant refuses to compose an event 0 times.
  return dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(step(sigma), count)
                                        for sigma, count in counts if count])


def epsilon(event: dp_accounting.DpEvent, delta: float, accountant_name: str) -> float:
  """Epsilon of `event` at `delta` (inf for an event without noise)."""
  acc = accountant(accountant_name)
  if not acc.supports(event):
    raise ValueError(f"the {accountant_name} accountant cannot compose {type_names(event)}: "
                     "truncated steps (max_people_per_step below the number of people) need "
                     "accountant 'pld'")
  return float(acc.compose(event).get_epsilon(delta))


def type_names(event: dp_accounting.DpEvent) -> str:
  """The kinds of step an event composes, for messages."""
  if isinstance(event, dp_accounting.ComposedDpEvent):
    return ", ".join(sorted({type_names(e) for e in event.events}))
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    return type_names(event.event)
  return type(event).__name__


def calibrate(make_event: Callable[[float], dp_accounting.DpEvent], target_epsilon: float,
              delta: float, accountant_name: str) -> float:
  """The smallest noise multiplier (within CALIBRATION_TOLERANCE) whose event's epsilon at
  `delta` is at most `target_epsilon`; ValueError when none below 2^30 is."""
  epsilon(make_event(1.0), delta, accountant_name)  # The accountant supports the event.
  try:
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: accountant(accountant_name), make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
        tol=CALIBRATION_TOLERANCE))
  except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError:
    raise ValueError(f"privacy.target_epsilon={target_epsilon} at delta={delta} is out of reach: "
                     "no noise multiplier below 2^30 meets it") from None


def check_config(config: ml_collections.ConfigDict, people: int) -> None:
  """Raises ValueError naming the first field of a `privacy` block that cannot be trained with
  `people` identities."""
  if people < 1:
    raise ValueError("privacy: no people to train on")
  accountant(config.accountant)
  if not 0 < config.target_epsilon < math.inf:
    raise ValueError(f"privacy.target_epsilon must be positive and finite, got "
                     f"{config.target_epsilon}")
  if not 0 < config.delta < 1 / people:
    raise ValueError(f"privacy.delta must be in (0, 1 / people) = (0, {1 / people:.3g}) with "
                     f"{people} people (a delta of 1 / people allows releasing one of them), got "
                     f"{config.delta}")
  if not 0 < config.people_per_step <= people:
    raise ValueError(f"privacy.people_per_step must be in (0, {people}] (the people trained on), "
                     f"got {config.people_per_step}")
  if config.max_people_per_step != -1 and config.max_people_per_step < 1:
    raise ValueError(f"privacy.max_people_per_step must be -1 (no limit) or positive, got "
                     f"{config.max_people_per_step}")
  if config.max_photos_per_person < 1:
    raise ValueError(f"privacy.max_photos_per_person must be positive, got "
                     f"{config.max_photos_per_person}")
  if not 0 < config.clip_norm < math.inf:
    raise ValueError(f"privacy.clip_norm must be positive and finite, got {config.clip_norm}")
  if config.noise_multiplier != -1 and config.noise_multiplier < 0:
    raise ValueError(f"privacy.noise_multiplier must be -1 (calibrated to target_epsilon) or "
                     f"non-negative, got {config.noise_multiplier}")


def max_people(config: ml_collections.ConfigDict, people: int) -> int | None:
  """The truncation of each step's sample, None when a step can keep everyone it samples."""
  limit = config.max_people_per_step
  return None if limit == -1 or limit >= people else int(limit)


def plan(config: ml_collections.ConfigDict, *, people: int, steps: int, r1_steps: int = 0,
         noise_multiplier: float | None = None) -> dict[str, Any]:
  """The privacy metadata of a run of `steps` sampled steps (`r1_steps` of them releasing twice)
  over `people` identities, for the `privacy` block `config`.

  The noise multiplier is `noise_multiplier` when given (a resumed run keeps its own), else the
  config's, else calibrated to target_epsilon. ValueError when the run would spend more than
  target_epsilon, before any training. Returns JSON: epsilon, delta, target_epsilon,
  noise_multiplier, sampling_rate, people, people_per_step, steps (noisy updates composed:
  steps + r1_steps), r1_steps, max_people_per_step (null: no truncation), max_photos_per_person,
  clip_norm, accountant, dp_event (the composition, as dp-accounting prints it) and the
  dp_accounting version.
  """
  check_config(config, people)
  rate = config.people_per_step / people
  limit = max_people(config, people)

  def make_event(sigma: float) -> dp_accounting.DpEvent:
    return dp_event(people=people, sampling_rate=rate, noise_multiplier=sigma, steps=steps,
                    r1_steps=r1_steps, max_people_per_step=limit)

  if noise_multiplier is None and config.noise_multiplier != -1:
    noise_multiplier = config.noise_multiplier
  if noise_multiplier is None:
    noise_multiplier = calibrate(make_event, config.target_epsilon, config.delta,
                                 config.accountant)
  event = make_event(noise_multiplier)
  spent = epsilon(event, config.delta, config.accountant)
  if not spent <= config.target_epsilon:
    raise ValueError(
        f"privacy budget exceeded: {steps} steps ({r1_steps} with an R1 update) at noise "
        f"multiplier {noise_multiplier:.6g}, sampling rate {rate:.4g} of {people} people spend "
        f"epsilon {spent:.4g} > privacy.target_epsilon={config.target_epsilon} at delta "
        f"{config.delta}")
  return {
      "epsilon": spent, "delta": float(config.delta),
      "target_epsilon": float(config.target_epsilon),
      "noise_multiplier": float(noise_multiplier), "sampling_rate": rate, "people": int(people),
      "people_per_step": float(config.people_per_step), "steps": int(steps + r1_steps),
      "r1_steps": int(r1_steps), "max_people_per_step": limit,
      "max_photos_per_person": int(config.max_photos_per_person),
      "clip_norm": float(config.clip_norm), "accountant": config.accountant,
      "dp_event": repr(event),
      "dp_accounting": importlib.metadata.version("dp-accounting"),
  }


def epsilon_from_metadata(meta: Mapping[str, Any]) -> float:
  """Epsilon recomputed with dp-accounting from the `privacy` metadata `plan` wrote."""
  try:
    event = dp_event(people=meta["people"], sampling_rate=meta["sampling_rate"],
                     noise_multiplier=meta["noise_multiplier"],
                     steps=meta["steps"] - meta["r1_steps"], r1_steps=meta["r1_steps"],
                     max_people_per_step=meta["max_people_per_step"])
    return epsilon(event, meta["delta"], meta["accountant"])
  except KeyError as missing:
    raise ValueError(f"privacy metadata lacks {missing}: not written by gmia.privacy") from None
