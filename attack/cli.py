"""What every attack entry point shares: `--config` (an ml_collections file) and `--workdir`.

A command is a library job `run(config, workdir) -> result` plus how to show its result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from absl import app, flags

from gmia import cli, parallel, progress


def entry_point(config_file: str, run: Callable[[Any, str], Any],
                show: Callable[[Any, str], None]) -> Callable[[list[str]], None]:
  """Defines the flags and returns the `main` for `gmia.cli.run`.

  config_file: the default config, a file in attack/configs/; any field can be overridden with
  --config.FIELD=VALUE. show(result, workdir) prints the outcome.
  """
  config = cli.define_config(os.path.join(os.path.dirname(__file__), "configs", config_file))
  workdir = flags.DEFINE_string("workdir", None, "Where the job writes its results.",
                                required=True)

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed()
    progress.quiet_library_logs()
    show(run(config.value, workdir.value), workdir.value)

  return main
