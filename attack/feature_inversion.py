"""Feature inversion of a split encoder: recovers victims' faces from their features per layer.

  python -m attack.feature_inversion --workdir=runs/inversion \
      --config.network.path=runs/demo/face_encoder --config.inversion.num_steps=500

Writes report.json, table.md (PSNR, SSIM, identity similarity per layer) and inversions.png.
"""

import os

from gmia import cli
from gmia.jobs import feature_inversion


def _show(_, workdir):
  with open(os.path.join(workdir, "table.md")) as table:
    print(table.read())


if __name__ == "__main__":
  cli.launch(feature_inversion.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "feature_inversion.py"))
