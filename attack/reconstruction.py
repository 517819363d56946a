"""Reconstruction attacks on a generator: projects members' and non-members' photos into it.

  python -m attack.reconstruction --workdir=runs/gan_leaks \
      --config.generator=gmia:runs/demo/gan

Projections start at w_avg, or at a latent encoder's guess (train/train_latent_encoder.py), which
reaches the same error in fewer steps when the noise added to w is off:

      --config.latent_encoder_workdir=runs/demo/latent_encoder \
      --config.projection.initial_noise_factor=0

Writes report.json (AUC, TPR at FPR per attack), scores.csv, roc.png and reconstructions.png.
"""

import os

from gmia import cli
from gmia.jobs import reconstruction


def _show(summary, _):
  for name, result in summary["attacks"].items():
    print(f"{name}: AUC {result['auc']:.3f}")


if __name__ == "__main__":
  cli.launch(reconstruction.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "reconstruction.py"))
