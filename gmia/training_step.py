"""What every evaluated trainer does after a step: evaluate, report and checkpoint on schedule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from gmia.checkpoint import Checkpointer
from gmia.progress import Progress


def after_step(done: int, state: Any, train_metrics: Mapping[str, float],
               metrics: dict[str, float], *, config: ml_collections.ConfigDict,
               evaluate: Callable[[Any], dict[str, float]], progress: Progress,
               checkpointer: Checkpointer, meta: dict[str, Any]) -> dict[str, float]:
  """After step `done` of config.num_steps: held-out metrics every config.eval_every steps and
  at the end (returned; otherwise `metrics` is returned unchanged), the progress line with them,
  and a checkpoint every config.checkpoint_every steps and at the end."""
  last = done == config.num_steps
  if done % config.eval_every == 0 or last:
    metrics = evaluate(state)
    progress.update(done, {**train_metrics, **{f"eval/{k}": v for k, v in metrics.items()}})
  else:
    progress.update(done, train_metrics)
  if done % config.checkpoint_every == 0 or last:
    checkpointer.save(done, state, meta)
  return metrics
