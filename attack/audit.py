"""Audit: was this person's face used to train the generator?

  python -m attack.audit --workdir=runs/audit --config.photos_dir=my_photos \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/encoder

Prints the verdict in plain words and writes audit.json.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.attacks import audit

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "audit.py"), "Audit config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the audit writes.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  result = audit.run(_CONFIG.value, _WORKDIR.value)
  print(result["verdict"])


if __name__ == "__main__":
  app.run(main)
