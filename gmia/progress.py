"""Progress of long loops: a console line and TensorBoard scalars.

Only process 0 prints and writes, so multi-host runs do not produce N copies.
"""

from __future__ import annotations

import contextlib
import logging as logging_std
import os
import time
import warnings
from collections.abc import Iterator, Mapping

import jax
from absl import logging


class Progress:
  """Reports steps/s, items/s, ETA and metrics every `every_steps` steps."""

  def __init__(self, total_steps: int, *, workdir: str | None = None, every_steps: int = 10,
               items_name: str = "images", items_per_step: int = 1, start_step: int = 0):
    self.total_steps = total_steps
    self.every_steps = max(1, every_steps)
    self.items_name = items_name
    self.items_per_step = items_per_step
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._writer = None
    if workdir is not None and jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # Imported lazily: only runs that log need it.
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    """Records `metrics` after `step` steps; prints on every `every_steps`-th step and the last."""
    if step % self.every_steps and step != self.total_steps:
      return
    if jax.process_index() != 0:
      return
    now = time.perf_counter()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    values = {k: float(v) for k, v in metrics.items()}
    eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
    shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("step %d/%d  %.2f steps/s  %.1f %s/s  eta %s  %s", step, self.total_steps,
                 steps_per_s, steps_per_s * self.items_per_step, self.items_name,
                 _format_seconds(eta), shown)
    if self._writer is not None:
      for name, value in values.items():
        self._writer.add_scalar(name, value, step)
      self._writer.add_scalar("steps_per_second", steps_per_s, step)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _format_seconds(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


_CHATTY_LIBRARIES = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")
# Where gmia's own log records and warnings come from: the package and its entry points.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GMIA_FILES = tuple(os.path.join(_ROOT, name, "") for name in ("gmia", "attack", "train", "bench"))
_GMIA_MODULES = r"(gmia|attack|train|bench)(\.|$)"


class _QuietLibraries(logging_std.Filter):
  """Passes gmia's records and every library's errors; drops the libraries' INFO and WARNING
  records (Orbax logs every save and restore, JAX its backend probing, tensorflow-datasets its
  data configurations)."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.ERROR or record.pathname.startswith(_GMIA_FILES)


_QUIET = _QuietLibraries()


def quiet_library_logs(verbose: bool = False) -> None:
  """Keeps the terminal to gmia's progress lines, results and errors: the log records of other
  libraries below ERROR, their Python warnings and tensorflow-datasets' progress bars are left
  out, unless `verbose`. Call it once the command's modules are imported."""
  if verbose:
    return
  logging.get_absl_handler().addFilter(_QUIET)  # Every logger's records reach absl's handler.
  warnings.filterwarnings("ignore", module=f"(?!{_GMIA_MODULES})")
  import tensorflow_datasets as tfds  # Imported already by gmia.data, whose builders draw bars.
  tfds.disable_progress_bar()


class _HoldLibraryErrors(logging_std.Filter):
  """Keeps back ERROR records from chatty libraries."""

  def __init__(self):
    super().__init__()
    self.held: list[logging_std.LogRecord] = []

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.levelno >= logging_std.ERROR and any(
        part in record.pathname for part in _CHATTY_LIBRARIES):
      self.held.append(record)
      return False
    return True


@contextlib.contextmanager
def library_errors_held() -> Iterator[None]:
  """Holds back the errors chatty libraries log in the block (Orbax logs a failed write's
  traceback from each of its threads), and logs them after it unless it raises: its exception,
  which chains the library's, then tells it once."""
  held = _HoldLibraryErrors()
  logger = logging_std.getLogger("absl")
  logger.addFilter(held)
  try:
    yield
  finally:
    logger.removeFilter(held)
  for record in held.held:
    logger.handle(record)
