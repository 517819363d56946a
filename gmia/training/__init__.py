"""The one training loop of gmia: trainers describe a `Task`, `run` trains it; the weights' moving
average both generators keep (`ema`)."""

from gmia.training.loop import Phase, Result, Task, run
from gmia.training.loop import EVAL_FILE
from gmia.training.schedule import default_config

__all__ = ["EVAL_FILE", "Phase", "Result", "Task", "default_config", "run"]
