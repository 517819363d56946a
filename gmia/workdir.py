"""One writer per workdir: a lock held for the life of a job, and the removal of what a killed
job left half-written.

    with workdir.locked(path):
      ...  # train, attack: write under `path`

The lock is an `fcntl.flock` on `path/.gmia-lock`, which the OS releases when the process
dies, however it dies (kill -9 included): a second process that asks for a held workdir fails at
once, naming the holder's PID, instead of interleaving its writes with the first one's. It is
re-entrant within a process (a job that runs a trainer in its own workdir), and taken by process
0 only in a multi-host job, whose processes share one workdir. Whoever takes the lock is the only
writer, so the temporary files and folders it finds (an atomic write's, an unfinished Orbax step)
belong to a process that died, and are removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
from absl import logging

from gmia import files

LOCK_FILE = ".gmia-lock"
# An atomic write's temporary file, and Orbax's suffix of a step (or item) not yet finalised.
TEMPORARY_MARKS = (files.TEMPORARY_MARK, ".orbax-checkpoint-tmp")

_held: dict[str, list[int]] = {}  # realpath -> [descriptor, depth]
_held_guard = threading.Lock()


T = TypeVar("T")


class WorkdirBusyError(OSError):
  """Another process holds the workdir's lock."""


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
  """Holds `path`'s lock (creating the folder) for the block; removes stale temporaries when it
  takes the lock. Raises WorkdirBusyError naming the holder's PID when another process has it."""
  if jax.process_index() != 0:
    yield
    return
  key = os.path.realpath(path)
  with _held_guard:
    if key in _held:
      _held[key][1] += 1
    else:
      descriptor = _acquire(key)
      try:
        removed = remove_temporaries(key)
      except BaseException:
        os.close(descriptor)
        raise
      _held[key] = [descriptor, 1]
      if removed:
        logging.warning("removed what an interrupted run left half-written in %s: %s", key,
                        ", ".join(os.path.relpath(p, key) for p in removed))
  try:
    yield
  finally:
    with _held_guard:
      _held[key][1] -= 1
      if not _held[key][1]:
        os.close(_held.pop(key)[0])  # Closing the descriptor releases the flock.


def _acquire(path: str) -> int:
  """A descriptor of `path`'s lock file, exclusively flock-ed, with this process's PID in it."""
  os.makedirs(path, exist_ok=True)
  lock_path = os.path.join(path, LOCK_FILE)
  descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as error:
    os.close(descriptor)
    if error.errno not in (errno.EAGAIN, errno.EACCES):
      raise
    with open(lock_path) as handle:
      holder = handle.read().strip() or "unknown"
    raise WorkdirBusyError(f"{path} is in use by another gmia process (PID {holder}): wait "
                           "for it to end, or use another --workdir") from None
  os.ftruncate(descriptor, 0)
  os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
  return descriptor


def remove_temporaries(root: str) -> list[str]:
  """Removes every temporary file or folder (TEMPORARY_MARKS) under `root`, but not inside
  another workdir (a folder with its own lock file) there; returns their paths. Only the
  workdir's lock holder may call it: another writer's would go too."""
  removed = []
  for folder, subfolders, names in os.walk(root):
    for name in names:
      if any(mark in name for mark in TEMPORARY_MARKS):
        removed.append(os.path.join(folder, name))
        os.remove(removed[-1])
    for name in list(subfolders):
      path = os.path.join(folder, name)
      if any(mark in name for mark in TEMPORARY_MARKS):
        removed.append(path)
        shutil.rmtree(path)
        subfolders.remove(name)
      elif os.path.exists(os.path.join(path, LOCK_FILE)):
        subfolders.remove(name)
  return removed


def exclusive(job: Callable[..., T]) -> Callable[..., T]:
  """Decorates a job `job(config, workdir, ...)` to run holding `workdir`'s lock."""
  @functools.wraps(job)
  def locked_job(config: Any, workdir: str, *args: Any, **kwargs: Any) -> T:
    with locked(workdir):
      return job(config, workdir, *args, **kwargs)
  return locked_job
