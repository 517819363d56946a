"""The `--config` flag every command line shares, with plain errors for mistyped fields.

ml_collections resolves `--config.FIELD=VALUE` overrides when the flag is defined (default file)
or parsed (`--config=FILE`), and a field the config lacks ends there in a bare KeyError or
AttributeError traceback. `define_config` and `run` turn that into one line naming the override.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

CONFIG_HELP = "Config file (ml_collections); override fields with --config.FIELD=VALUE."


def unknown_field_message(error: Exception, argv: Sequence[str]) -> str:
  """What to tell a user whose `--config.FIELD` override names no field of the config."""
  while error.args and isinstance(error.args[0], Exception):  # AttributeError(KeyError(...))
    error = error.args[0]
  detail = str(error.args[0] if error.args else error).replace("\n", ". ")
  overrides = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
  return f"unknown config field {detail} (overrides given: {', '.join(overrides) or 'none'})"


def define_config(default: str | None = None, help_text: str = CONFIG_HELP) -> flags.FlagHolder:
  """Defines `--config` (required when there is no default) with locked fields."""
  try:
    holder = config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
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


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)`, with unknown config fields reported as flag errors."""
  app.run(main, flags_parser=_parse_flags)
