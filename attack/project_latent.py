"""Reconstruction attacks on a generator: projects members' and non-members' photos into it.

  python -m attack.project_latent --workdir=runs/gan_leaks \
      --config.generator_workdir=runs/demo/gan

Writes report.json (AUC, TPR at FPR per attack), scores.csv, roc.png and reconstructions.png.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.attacks import reconstruction

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "project_latent.py"),
    "Reconstruction attack config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the attack writes.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  summary = reconstruction.run(_CONFIG.value, _WORKDIR.value)
  for name, result in summary["attacks"].items():
    print(f"{name}: AUC {result['auc']:.3f}")


if __name__ == "__main__":
  app.run(main)
