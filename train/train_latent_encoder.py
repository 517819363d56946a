r"""Trains a feed-forward latent encoder (image -> w) on a generator's own samples.

  python -m train.train_latent_encoder --config=train/configs/latent_encoder_cpu_demo.py \
      --workdir=/tmp/latent_encoder --config.generator_workdir=/tmp/gan_demo

Rerunning the same command resumes from the latest checkpoint in --workdir. Give the workdir to
the reconstruction attack (--config.latent_encoder_workdir) to start its projections there.
"""

from absl import app, flags

from gmia import cli, parallel, progress
from gmia.inversion import latent_encoder_training

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and "
                               "eval.json.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  latent_encoder_training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
