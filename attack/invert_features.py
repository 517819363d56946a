"""Feature inversion of a split encoder: recovers victims' faces from their features per layer.

  python -m attack.invert_features --workdir=runs/inversion \
      --config.encoder_workdir=runs/demo/encoder --config.inversion.num_steps=500

Writes report.json, table.md (PSNR, SSIM, identity similarity per layer) and inversions.png.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.inversion import feature_job

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "invert_features.py"),
    "Feature inversion config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the attack writes.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  feature_job.run(_CONFIG.value, _WORKDIR.value)
  with open(os.path.join(_WORKDIR.value, "table.md")) as table:
    print(table.read())


if __name__ == "__main__":
  app.run(main)
