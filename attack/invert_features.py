"""Feature inversion of a split encoder: recovers victims' faces from their features per layer.

  python -m attack.invert_features --workdir=runs/inversion \
      --config.encoder_workdir=runs/demo/face_encoder --config.inversion.num_steps=500

Writes report.json, table.md (PSNR, SSIM, identity similarity per layer) and inversions.png.
"""

import os

from gmia import cli
from gmia.inversion import feature_job


def _show(_, workdir):
  with open(os.path.join(workdir, "table.md")) as table:
    print(table.read())


if __name__ == "__main__":
  cli.launch(feature_job.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "invert_features.py"))
