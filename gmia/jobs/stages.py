"""Stages of a job: a piece of work cached behind one marker file in its directory.

A stage runs unless its directory holds the marker, which is written (atomically) only after
the work finished and records the wall seconds it took; so a killed job resumes at the stage it
was in, a finished one is not redone, and a cached stage still reports its time. Every job
with stages (the main job, the sweep, the calibration, the shadow generators) uses this one
marker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from gmia import files

MARKER = "DONE"


def is_done(directory: str) -> bool:
  """Whether the stage kept in `directory` finished."""
  return os.path.exists(os.path.join(directory, MARKER))


def seconds(directory: str) -> float:
  """The wall seconds a finished stage took."""
  return float(files.read_json(os.path.join(directory, MARKER))["seconds"])


def run_stage(directory: str, run: Callable[[], object], name: str | None = None) -> float:
  """Runs `run()` unless `directory` holds the marker, then writes it; returns the stage's wall
  seconds (those recorded when it is cached). `name` labels the progress lines (default: the
  directory)."""
  label = name or directory
  if is_done(directory):
    print(f"[{label}] cached in {directory}", flush=True)
    return seconds(directory)
  print(f"[{label}] running ...", flush=True)
  started = time.perf_counter()
  run()
  took = time.perf_counter() - started
  files.write_json(os.path.join(directory, MARKER), {"seconds": took})
  return took
