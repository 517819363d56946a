"""The training loop every gmia trainer runs.

A trainer describes its work as a `Task`: how to make the fresh state, its phases (each a step
function and where its batches come from), its held-out evaluation and the metadata its
checkpoints carry. `run` does the rest, the same way for every trainer:

- the workdir's lock (gmia.workdir) for the whole run: a second process on it fails at once;
- the mesh, and the state's shardings (replicated unless the task says otherwise);
- the resume check: a workdir holding a checkpoint is continued only by the same computation
  (gmia.training.schedule) trained from the same inputs (`Task.inputs`, e.g. a generator's
  fingerprint);
- the fresh state, or the newest intact checkpoint (gmia.checkpoint: newer corrupt ones are
  set aside with a warning) restored into the shardings of this mesh (another device count than
  the one that saved it works);
- every step jitted with explicit output shardings and the state donated; batches prepared one
  step ahead in a thread, each process materialising only its slice of every global batch;
- a progress line every `log_every` steps and at every evaluation, the held-out evaluation
  every `eval_every` steps and at the end, checkpoints every `checkpoint_every` steps and at the
  end of every phase, `eval.json` at the end;
- a watch for NaN and inf: after every step a small program folds "are the step's metrics and
  the whole new state finite" into a running record of the first step that was not, on device;
  the loop reads it (a few scalars) before every progress line, evaluation and checkpoint, so
  no step waits for the host, no checkpoint ever holds a non-finite value, and a diverged run
  stops with NonFiniteError naming the step and what went non-finite, after logging that step's
  metrics (NaN and inf shown).

A step's batch and randomness are functions of (seed, step), so a run killed and resumed
reproduces the uninterrupted one, and only the remaining steps run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from gmia import files, parallel
from gmia.checkpoint import Checkpointer
from gmia.finite import NonFiniteError, all_finite, nonfinite_leaves
from gmia.progress import Progress
from gmia.training import schedule
from gmia.workdir import locked

EVAL_FILE = "eval.json"
State = Any
Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Phase:
  """`num_steps` consecutive steps of one kind.

  step: `(state, batch, consts) -> (state, metrics)`, pure; the loop jits it.
  batches: `global step -> this process's slice of that step's batch` (a pytree of numpy arrays
    whose leading axis is split over the mesh's `data` axis), or None when the step draws its
    own data from the state's step counter.
  enter: applied to the state (jitted) when the phase begins, not when it resumes midway.
  """
  name: str
  num_steps: int
  step: Callable[[State, Any, Any], tuple[State, Metrics]]
  batches: Callable[[int], Any] | None = None
  enter: Callable[[State], State] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  """What a trainer supplies to `run`.

  kind: what the workdir holds ("gan", "face_encoder", ...), recorded with every checkpoint.
  init: `consts -> fresh state`, pure and traceable (its shapes are the restore template).
  consts: arrays every step reads but never changes (network variables, photos), placed once
    and replicated; passed to `init`, every step and nothing else.
  meta: JSON saved with every checkpoint besides the config (the split, the classes, ...).
  inputs: fingerprints of what the run trains from, which a resumed run must share.
  evaluate: `state -> held-out metrics` (host floats), or None.
  on_checkpoint: `(step, state) -> None`, after every checkpoint (e.g. a sample grid).
  shardings: `(abstract state, mesh) -> shardings`; default: everything replicated.
  resumable: config fields (dotted) a resumed run may change besides the schedule's.
  fresh: `consts -> fresh state` for a task whose fresh state cannot be one compiled program
    (a synthesis driven from Python); it must return what `init` describes. Without it `init`
    is compiled without backend optimisation, which compiles several times faster (it runs
    once, and is a few random draws).
  items_per_step: for the progress line's items/s.
  """
  kind: str
  init: Callable[[Any], State]
  phases: Sequence[Phase]
  consts: Any = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  evaluate: Callable[[State], dict[str, float]] | None = None
  on_checkpoint: Callable[[int, State], None] | None = None
  shardings: Callable[[Any, Mesh], Any] | None = None
  resumable: frozenset[str] = frozenset()
  fresh: Callable[[Any], State] | None = None
  items_per_step: int = 1


@dataclasses.dataclass
class Result:
  """state: the final training state; metrics: the held-out evaluation of it ({} without one);
  train_metrics: the last logged step's; resumed_from: the step the run started at;
  steps_run: the steps this call ran."""
  state: State
  metrics: dict[str, float]
  train_metrics: dict[str, float]
  resumed_from: int
  steps_run: int


def run(task: Task | Callable[[], Task], config: ml_collections.ConfigDict,
        workdir: str) -> Result:
  """Trains `task` in `workdir` (resuming its latest checkpoint) on the schedule in `config`.

  `task` may be a function that builds the Task: it is called once the workdir is locked, so
  what building it writes there (a trainer's split.json) has one writer too.
  """
  schedule.check_schedule(config)
  os.makedirs(workdir, exist_ok=True)
  with locked(workdir):
    if not isinstance(task, Task):
      task = task()
    if not task.phases or min(phase.num_steps for phase in task.phases) < 0 or not sum(
        phase.num_steps for phase in task.phases):
      raise ValueError(f"the {task.kind} run needs a positive number of steps, got "
                       f"{[phase.num_steps for phase in task.phases]}")
    result = _run_locked(task, config, workdir)
    if task.evaluate is not None:
      files.write_json(os.path.join(workdir, EVAL_FILE), result.metrics)
  if result.metrics:
    logging.info("%s held-out evaluation: %s", task.kind, json.dumps(result.metrics))
  return result


def _run_locked(task: Task, config: ml_collections.ConfigDict, workdir: str) -> Result:
  """`run` once the workdir is this process's: resume or start, then train."""
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  meta = {"kind": task.kind, "config": json.loads(config.to_json()), "inputs": dict(task.inputs),
          **task.meta}
  checkpointer = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  try:
    start = checkpointer.resume_step() or 0
    if start:
      _check_continues(checkpointer.restore_meta(start), meta, task.resumable)
    consts = jax.device_put(task.consts, replicated)
    abstract = jax.eval_shape(task.init, consts)
    shardings = (task.shardings(abstract, mesh) if task.shardings
                 else jax.tree.map(lambda _: replicated, abstract))
    if start:
      state, _ = checkpointer.restore(start, jax.tree.map(
          lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
          abstract, shardings))
      logging.info("%s: resumed %s at step %d of %d", task.kind, workdir, start,
                   sum(phase.num_steps for phase in task.phases))
    else:
      state = _fresh_state(task, consts, shardings)
    result = _train(task, config, workdir, mesh, state, consts, shardings, checkpointer, meta,
                    start)
  finally:
    checkpointer.close()
  return result


def _check_continues(saved: Mapping[str, Any], meta: Mapping[str, Any],
                     resumable: frozenset[str]) -> None:
  if saved.get("kind", meta["kind"]) != meta["kind"]:
    raise ValueError(f"the workdir holds a {saved['kind']} checkpoint, not a {meta['kind']} run: "
                     "use a fresh --workdir")
  schedule.check_resumable(saved["config"], meta["config"], resumable)
  for name, fingerprint in meta["inputs"].items():
    if saved.get("inputs", {}).get(name) != fingerprint:
      raise ValueError(f"the workdir holds a run trained from another {name} "
                       f"({saved.get('inputs', {}).get(name)}, now {fingerprint}); use a fresh "
                       "--workdir or the original input")


def _fresh_state(task: Task, consts: Any, shardings: Any) -> State:
  began = time.perf_counter()
  if task.fresh is None:
    state = jax.jit(task.init, out_shardings=shardings).lower(consts).compile(
        {"xla_backend_optimization_level": 0})(consts)
  else:
    state = jax.device_put(task.fresh(consts), shardings)
  logging.info("%s: fresh state in %.1f s", task.kind, time.perf_counter() - began)
  return state


def _train(task: Task, config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, state: State,
           consts: Any, shardings: Any, checkpointer: Checkpointer, meta: Mapping[str, Any],
           start: int) -> Result:
  """The steps from `start` to the end of the last phase, with their reports and checkpoints."""
  replicated = parallel.replicated(mesh)
  total = sum(phase.num_steps for phase in task.phases)
  progress = Progress(total, workdir=workdir, every_steps=1, items_per_step=task.items_per_step,
                      start_step=start)
  named = len(task.phases) > 1
  metrics: dict[str, float] = {}
  train_metrics: dict[str, float] = {}
  step, begin, saved = start, 0, start or None
  watch_fn = jax.jit(_watch_update, out_shardings=replicated, donate_argnums=0)
  try:
    for phase in task.phases:
      end = begin + phase.num_steps
      prefix = phase.name if named else ""
      if step < end:
        if step == begin and phase.enter is not None:
          state = jax.jit(phase.enter, out_shardings=shardings, donate_argnums=0)(state)
        step_fn = jax.jit(phase.step, out_shardings=(shardings, replicated), donate_argnums=0)
        watch = None
        for index, batch in _prefetched(phase.batches, step, end, mesh):
          if watch is None:
            step_fn = parallel.compiled_together(step_fn, state, batch, consts,
                                                 name=f"{task.kind} step {phase.name}")
          state, step_metrics = step_fn(state, batch, consts)
          if watch is None:
            watch = _watch_start(index, step_metrics, replicated)
          watch = watch_fn(watch, state, step_metrics)
          step = index + 1
          evaluated = task.evaluate is not None and (
              step == total or (config.eval_every and step % config.eval_every == 0))
          logged = evaluated or step % config.log_every == 0 or step == end
          checkpointed = step % config.checkpoint_every == 0 or step == end
          if logged or checkpointed:
            _stop_if_nonfinite(watch, state, progress, prefix, task.kind, saved)
          if evaluated:
            metrics = task.evaluate(state)
          if logged:
            train_metrics = _host(step_metrics, prefix)
            progress.update(step, {**train_metrics,
                                   **({f"eval/{k}": v for k, v in metrics.items()}
                                      if evaluated else {})})
          if checkpointed:
            checkpointer.save(step, state, meta)
            saved = step
            if task.on_checkpoint is not None:
              task.on_checkpoint(step, state)
      begin = end
  finally:
    progress.close()
  if task.evaluate is not None and not metrics:  # A finished run resumed: measure it again.
    metrics = task.evaluate(state)
  return Result(state, metrics, train_metrics, start, step - start)


def _watch_start(step: int, metrics: Metrics, sharding: NamedSharding) -> dict[str, Any]:
  """A phase's record of its first non-finite step, none yet (`first` = -1), counting from
  global step `step`; `metrics` gives the structure of a step's metrics."""
  return jax.device_put({"step": np.int32(step), "first": np.int32(-1), "state_finite": True,
                         "metrics": jax.tree.map(jnp.zeros_like, metrics)}, sharding)


def _watch_update(watch: dict[str, Any], state: State, metrics: Metrics) -> dict[str, Any]:
  """`watch` after one more step that produced `state` and `metrics`: the first step whose
  metrics or state hold NaN or inf, whether its state did, and its metrics."""
  state_finite = all_finite(state)
  is_first = (watch["first"] < 0) & ~(state_finite & all_finite(metrics))
  step = watch["step"] + 1
  return {"step": step, "first": jnp.where(is_first, step, watch["first"]),
          "state_finite": jnp.where(is_first, state_finite, watch["state_finite"]),
          "metrics": jax.tree.map(lambda new, old: jnp.where(is_first, new, old), metrics,
                                  watch["metrics"])}


def _stop_if_nonfinite(watch: dict[str, Any], state: State, progress: Progress, prefix: str,
                       kind: str, saved: int | None) -> None:
  """Raises NonFiniteError, after logging that step's metrics, when a step watched by `watch`
  produced NaN or inf; `saved` is the newest checkpoint's step."""
  first = int(watch["first"])
  if first < 0:
    return
  metrics = _host(watch["metrics"], prefix)
  progress.update(first, metrics)
  found = [f"{name}={value}" for name, value in metrics.items() if not np.isfinite(value)]
  if not bool(watch["state_finite"]):
    leaves = nonfinite_leaves(state)
    found.append("state" + (f" (non-finite leaves now: {len(leaves)}, first "
                            f"{next(iter(leaves))})" if leaves else ""))
  newest = f"the newest checkpoint is step {saved}" if saved else "no checkpoint was saved"
  raise NonFiniteError(f"{kind} training diverged: step {first} produced non-finite "
                       f"{', '.join(found)}; stopped without saving it ({newest})")


def _host(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
  """Step metrics as host floats, named `prefix/name` when the run has several phases."""
  values = jax.device_get(dict(metrics))
  return {f"{prefix}/{k}" if prefix else k: float(np.asarray(v)) for k, v in values.items()}


def _prefetched(batches: Callable[[int], Any] | None, start: int, end: int,
                mesh: Mesh) -> Iterator[tuple[int, Any]]:
  """(step, the step's global batch sharded over `data`) for steps [start, end); host batches
  are prepared one step ahead in a thread."""
  if batches is None:
    yield from ((step, None) for step in range(start, end))
    return
  ready: queue.Queue = queue.Queue(maxsize=2)
  stop = threading.Event()

  def produce():
    for step in range(start, end):
      try:
        item = (step, batches(step))
      except Exception as error:  # Raised again in the training thread.
        item = (None, error)
      while not stop.is_set():
        try:
          ready.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if stop.is_set() or item[0] is None:
        return

  worker = threading.Thread(target=produce, daemon=True)
  worker.start()
  try:
    for _ in range(start, end):
      step, local = ready.get()
      if step is None:
        raise local
      yield step, jax.tree.map(lambda x: parallel.shard_batch(x, mesh), local)
  finally:
    stop.set()
