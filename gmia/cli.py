"""The one entry-point helper every command line uses: `--config`, `--workdir`, plain errors.

    python -m train.train_gan --config=train/configs/gan_tiny.py --workdir=runs/gan \
        --config.num_steps=100

`launch(job)` defines `--config` (an ml_collections file; any field can be overridden with
--config.FIELD=VALUE) and `--workdir`, joins a multi-host job when one is configured, runs
`job(config, workdir)` holding the workdir's lock (gmia.workdir: a second command on the same
workdir ends at once, naming the first one's PID) and shows its result. Mistakes a user makes
and failures of the machine end in one line on stderr and exit status 1, not a traceback: a
mistyped config field (ml_collections resolves overrides when the flag is defined or parsed, and
would end in a bare KeyError), a config file that is missing or fails to load, a missing or
corrupt checkpoint, a wrong kind of workdir, bad input, a diverged training, a busy workdir, a
full disk, a file that asks for more memory than there is. Other libraries' logs are left out
(gmia.progress.quiet_library_logs); `--verbose` shows them, and the traceback of an error.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.workdir import locked

CONFIG_HELP = "Config file (ml_collections); override fields with --config.FIELD=VALUE."
# Errors a user's input or the machine (OSError: a busy workdir, a full disk; MemoryError) causes:
# shown as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, MemoryError)
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


def one_line(error: BaseException, with_type: bool = False) -> str:
  """An error as one line: its message's first line (after its type, `with_type`), or its type
  where it has no message (a bare MemoryError: "out of memory")."""
  lines = str(error).strip().splitlines()
  if isinstance(error, MemoryError):
    return f"out of memory ({lines[0] if lines else 'MemoryError'})"
  if not lines:
    return type(error).__name__
  return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]


def config_file_of(argv: Sequence[str]) -> str | None:
  """The file of `--config=FILE[:ARG]` (or `--config FILE`) in `argv`, the last one given."""
  found = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      found = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      found = argv[i + 1]
  return None if found is None else found.split(":", 1)[0]


def _lines_in(error: BaseException, path: str) -> list[int]:
  """Line numbers of the config file `path` in the traceback of `error`, outermost first."""
  names = {path, os.path.abspath(path)}
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if frame.filename in names or os.path.abspath(frame.filename) in names]
  # ml_collections re-raises a TypeError or ValueError with the file's traceback as its message.
  for name in names:
    lines += [int(n) for n in re.findall(rf'File "{re.escape(name)}", line (\d+)', str(error))]
  if isinstance(error, SyntaxError) and error.filename in names and error.lineno:
    lines.append(error.lineno)
  return lines


def config_file_message(error: BaseException, path: str) -> str:
  """One line on a config file that fails to load: the file, the error and its line there."""
  if isinstance(error, SyntaxError):
    message = f"SyntaxError: {error.msg}"
  else:
    last = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = last[-1] if last else ""
    if not re.match(r"[\w.]+(Error|Exception|Exit|Interrupt): ", message):
      message = f"{type(error).__name__}: {message}".rstrip(": ")
  lines = _lines_in(error, path)
  return f"--config={path} fails to load{f' (line {lines[-1]})' if lines else ''}: {message}"


def flags_error_message(error: BaseException, argv: Sequence[str]) -> str:
  """One line for a command line whose flags cannot be parsed."""
  path = config_file_of(argv)
  if path is not None:
    if isinstance(error, AttributeError) and "get_config" in str(error):
      return f"--config={path} has no get_config()"
    if "NoneType" in str(error) or "before a value for --config" in str(error):  # A None config.
      return f"--config={path}: get_config() returned None, not an ml_collections ConfigDict"
    # The file's own error, which ml_collections and absl may wrap in others of theirs.
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) and len(chain) < 16:
      chain.append(chain[-1].__cause__ or chain[-1].__context__)
    raised = next((e for e in chain if _lines_in(e, path)), None)
    if raised is not None:
      return config_file_message(raised, path)
    # Overrides fail as absl's flag errors or lookups; anything else came from loading the file.
    if "config file" in str(error) or not isinstance(error, (flags.Error, KeyError,
                                                            AttributeError)):
      return config_file_message(error, path)
  if isinstance(error, (KeyError, AttributeError)):  # An override naming no field.
    return unknown_field_message(error, argv)
  return one_line(error)


def _parse_flags(argv: list[str]) -> list[str]:
  path = config_file_of(argv)
  if path is not None and not os.path.isfile(path):
    sys.exit(f"FATAL Flags parsing error: --config={path}: "
             f"{'not a file' if os.path.exists(path) else 'no such file'}")
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except
    if path is None and not isinstance(error, (flags.Error, KeyError, AttributeError)):
      raise
    # absl's own errors, overrides naming no field, and whatever a config file's code raises.
    sys.exit(f"FATAL Flags parsing error: {flags_error_message(error, argv)} (--help lists the "
             "flags)")


def launch(job: Callable[[Any, str], Any], *, default_config: str | None = None,
           show: Callable[[Any, str], None] | None = None,
           workdir_default: str | None = None,
           workdir_help: str = "Where the run keeps its checkpoints and results.") -> None:
  """Runs `job(config, workdir)` as a command line (see the module docstring); `show(result,
  workdir)` prints the outcome. Never returns (absl exits)."""
  config = _define_config(default_config)
  workdir = flags.DEFINE_string("workdir", workdir_default, workdir_help,
                                required=workdir_default is None)
  verbose = flags.DEFINE_bool("verbose", False,
                              "Show other libraries' logs and the traceback of an error.")

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    progress.quiet_library_logs(verbose.value)
    if not isinstance(config.value, ml_collections.ConfigDict):
      sys.exit(f"error: --config={config_file_of(sys.argv)}: get_config() returned "
               f"{type(config.value).__name__}, not an ml_collections ConfigDict")
    parallel.initialize_distributed()
    try:
      with locked(os.path.abspath(workdir.value)):
        result = job(config.value, os.path.abspath(workdir.value))
    except USER_ERRORS as error:
      if verbose.value:
        raise
      sys.exit(f"error: {one_line(error)} (--verbose shows where)")
    if show is not None:
      show(result, workdir.value)

  app.run(main, flags_parser=_parse_flags)
