"""The one entry-point helper every command line uses: `--config`, `--workdir`, plain errors.

    python -m train.train_gan --config=train/configs/gan_tiny.py --workdir=runs/gan \
        --config.num_steps=100

`launch(job)` defines `--config` (an ml_collections file; any field can be overridden with
--config.FIELD=VALUE) and `--workdir`, joins a multi-host job when one is configured, runs
`job(config, workdir)` holding the workdir's lock (gmia.workdir: a second command on the same
workdir ends at once, naming the first one's PID) and shows its result. Mistakes a user makes
and failures of the machine end in one line on stderr and exit status 1, not a traceback: a
mistyped config field (ml_collections resolves overrides when the flag is defined or parsed, and
would end in a bare KeyError), a missing or corrupt checkpoint, a wrong kind of workdir, bad
input, a diverged training, a busy workdir, a full disk. `--verbose` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.workdir import locked

CONFIG_HELP = "Config file (ml_collections); override fields with --config.FIELD=VALUE."
# Errors a user's input or the machine (OSError: a busy workdir, a full disk) causes: shown as
# one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)
# Config fields of earlier versions -> how they are spelled now.
RENAMED = {
    "encoder_workdir": "matcher.path (a face encoder workdir; for the sweep: "
                       "face_encoder_workdir; for an inversion: network.path)",
    "encoder_onnx": "matcher.path (an .onnx file)",
    "encoder_preset": "matcher.preset",
    "encoder_input_size": "matcher.input_size",
    "encoder_bgr": "matcher.bgr",
    "encoder_mean": "matcher.mean",
    "encoder_std": "matcher.std",
    "judge_onnx": "judge.path",
    "judge_preset": "judge.preset",
    "generator_workdir": "generator=gmia:WORKDIR",
    "network.workdir": "network.path",
    "network.onnx": "network.path",
}


def unknown_field_message(error: Exception, argv: Sequence[str]) -> str:
  """What to tell a user whose `--config.FIELD` override names no field of the config."""
  while error.args and isinstance(error.args[0], Exception):  # AttributeError(KeyError(...))
    error = error.args[0]
  detail = str(error.args[0] if error.args else error).replace("\n", ". ")
  overrides = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
  renamed = [f"--config.{field} is now --config.{now}" for field, now in RENAMED.items()
             if f"--config.{field}" in overrides]
  if renamed:
    return "; ".join(renamed)
  return f"unknown config field {detail} (overrides given: {', '.join(overrides) or 'none'})"


def _define_config(default: str | None) -> flags.FlagHolder:
  """`--config` (required when there is no default) with locked fields."""
  try:
    holder = config_flags.DEFINE_config_file("config", default, CONFIG_HELP, lock_config=True)
  except (KeyError, AttributeError) as error:  # An override resolved against the default file.
    sys.exit(f"FATAL Flags parsing error: {unknown_field_message(error, sys.argv)}")
  if default is None:
    flags.mark_flag_as_required("config")
  return holder


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as error:  # An override resolved against --config=FILE.
    sys.exit(f"FATAL Flags parsing error: {unknown_field_message(error, argv)}")


def launch(job: Callable[[Any, str], Any], *, default_config: str | None = None,
           show: Callable[[Any, str], None] | None = None,
           workdir_default: str | None = None,
           workdir_help: str = "Where the run keeps its checkpoints and results.") -> None:
  """Runs `job(config, workdir)` as a command line (see the module docstring); `show(result,
  workdir)` prints the outcome. Never returns (absl exits)."""
  config = _define_config(default_config)
  workdir = flags.DEFINE_string("workdir", workdir_default, workdir_help,
                                required=workdir_default is None)
  verbose = flags.DEFINE_bool("verbose", False, "Show the traceback of an error.")

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed()
    progress.quiet_library_logs()
    try:
      with locked(os.path.abspath(workdir.value)):
        result = job(config.value, os.path.abspath(workdir.value))
    except USER_ERRORS as error:
      if verbose.value:
        raise
      sys.exit(f"error: {error} (--verbose shows where)")
    if show is not None:
      show(result, workdir.value)

  app.run(main, flags_parser=_parse_flags)
