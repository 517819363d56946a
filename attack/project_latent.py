"""Reconstruction attacks on a generator: projects members' and non-members' photos into it.

  python -m attack.project_latent --workdir=runs/gan_leaks \
      --config.generator_workdir=runs/demo/gan \
      [--config.latent_encoder_workdir=runs/demo/latent_encoder]  # Projections start there.

Writes report.json (AUC, TPR at FPR per attack), scores.csv, roc.png and reconstructions.png.
"""

from absl import app

from attack import cli
from gmia.attacks import reconstruction


def _show(summary, _):
  for name, result in summary["attacks"].items():
    print(f"{name}: AUC {result['auc']:.3f}")


main = cli.entry_point("project_latent.py", reconstruction.run, _show)

if __name__ == "__main__":
  app.run(main)
