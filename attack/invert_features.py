"""Feature inversion of a split encoder: recovers victims' faces from their features per layer.

  python -m attack.invert_features --workdir=runs/inversion \
      --config.encoder_workdir=runs/demo/encoder --config.inversion.num_steps=500

Writes report.json, table.md (PSNR, SSIM, identity similarity per layer) and inversions.png.
"""

import os

from attack import cli
from gmia.inversion import feature_job
from gmia.cli import run


def _show(_, workdir):
  with open(os.path.join(workdir, "table.md")) as table:
    print(table.read())


main = cli.entry_point("invert_features.py", feature_job.run, _show)

if __name__ == "__main__":
  run(main)
