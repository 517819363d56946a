"""The training loop on a toy task: schedule, phases, resume, errors."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from gmia import training
from gmia.checkpoint import Checkpointer
from tests.resume_check import check_resume


def toy_config(**fields):
  config = training.default_config()
  config.update(log_every=3, eval_every=4, checkpoint_every=5, keep_checkpoints=10, factor=2.0)
  config.update(fields)
  return config


def toy_task(config, calls):
  """x accumulates batch means (phase "add"), then is scaled (phase "scale"); every call of the
  evaluation and checkpoint hooks is recorded in `calls`."""
  batches = lambda step: {"values": np.full((4,), step, np.float32)}

  def add(state, batch, _):
    return {"x": state["x"] + jnp.mean(batch["values"]), "step": state["step"] + 1}, {
        "x": state["x"]}

  def scale(state, _, consts):
    return {"x": state["x"] * consts["factor"], "step": state["step"] + 1}, {"x": state["x"]}

  def evaluate(state):
    calls.append(("eval", int(state["step"])))
    return {"x": float(state["x"])}

  return training.Task(
      kind="toy", init=lambda consts: {"x": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)},
      consts={"factor": jnp.float32(config.factor)},
      phases=[training.Phase("add", 7, add, batches),
              training.Phase("scale", 3, scale, enter=lambda s: {**s, "x": s["x"] + 1})],
      evaluate=evaluate, on_checkpoint=lambda step, _: calls.append(("checkpoint", step)))


def train_toy(config, workdir):
  calls = []
  result = training.run(toy_task(config, calls), config, workdir)
  return result, calls


def expected_x():
  return (sum(range(7)) + 1) * 2.0 ** 3


def test_schedule_phases_and_results(tmp_path):
  result, calls = train_toy(toy_config(), str(tmp_path))
  assert float(result.state["x"]) == expected_x() and result.steps_run == 10
  # Evaluation every 4 steps and at the end, whatever log_every; checkpoints every 5 steps and
  # at the end of each phase.
  assert [s for kind, s in calls if kind == "eval"] == [4, 8, 10]
  assert [s for kind, s in calls if kind == "checkpoint"] == [5, 7, 10]
  assert Checkpointer(str(tmp_path)).all_steps() == [5, 7, 10]
  with open(tmp_path / "eval.json") as handle:
    assert json.load(handle) == result.metrics == {"x": expected_x()}
  assert result.train_metrics == {"scale/x": expected_x() / 2}  # The last step's input.


def test_resume_runs_only_the_remaining_steps(tmp_path):
  train_toy(toy_config(), str(tmp_path / "run"))
  check_resume(lambda c, w: train_toy(c, w)[0], toy_config(), str(tmp_path / "run"),
               str(tmp_path / "resumed"))
  # Killed right after phase one ended: the second phase is entered on resume, not skipped.
  train_toy(toy_config(), str(tmp_path / "boundary"))
  shutil.rmtree(tmp_path / "boundary" / "checkpoints" / "10")
  result, _ = train_toy(toy_config(), str(tmp_path / "boundary"))
  assert result.resumed_from == 7 and float(result.state["x"]) == expected_x()
  # A finished run resumed runs nothing and measures the final state again.
  again, calls = train_toy(toy_config(), str(tmp_path / "boundary"))
  assert again.steps_run == 0 and calls == [("eval", 10)] and again.metrics == result.metrics


def test_resume_refuses_another_computation_but_not_another_schedule(tmp_path):
  train_toy(toy_config(), str(tmp_path))
  result, _ = train_toy(toy_config(log_every=1, checkpoint_every=2), str(tmp_path))
  assert result.steps_run == 0
  with pytest.raises(ValueError, match="another config: factor is 2.0 there but 3.0 now"):
    train_toy(toy_config(factor=3.0), str(tmp_path))
  calls = []
  other = toy_task(toy_config(), calls)
  with pytest.raises(ValueError, match="holds a toy checkpoint, not a other run"):
    training.run(training.Task(kind="other", init=other.init, phases=other.phases),
                 toy_config(), str(tmp_path))
  with pytest.raises(ValueError, match="trained from another data"):
    training.run(training.Task(kind="toy", init=other.init, phases=other.phases,
                               consts=other.consts, inputs={"data": "abc"}),
                 toy_config(), str(tmp_path))


@pytest.mark.parametrize("field,value", [("log_every", 0), ("checkpoint_every", -1),
                                         ("eval_every", -2), ("keep_checkpoints", 0)])
def test_bad_schedule_names_the_field(tmp_path, field, value):
  with pytest.raises(ValueError, match=f"config.{field} must be"):
    train_toy(toy_config(**{field: value}), str(tmp_path))


def test_a_failing_batch_source_raises_instead_of_hanging(tmp_path):
  def broken(step):
    raise OSError(f"disk gone at step {step}")

  task = training.Task(kind="toy", init=lambda _: {"step": jnp.zeros((), jnp.int32)},
                       phases=[training.Phase("p", 3, lambda s, b, c: (s, {}), broken)])
  with pytest.raises(OSError, match="disk gone at step 0"):
    training.run(task, toy_config(), str(tmp_path))
