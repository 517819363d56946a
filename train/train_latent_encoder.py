r"""Trains a feed-forward latent encoder (image -> w) on a generator's own samples.

  python -m train.train_latent_encoder --config=train/configs/latent_encoder_cpu_demo.py \
      --workdir=/tmp/latent_encoder --config.generator=gmia:/tmp/gan_demo

Rerunning the same command resumes from the latest checkpoint in --workdir. Give the workdir to
the reconstruction attack (--config.latent_encoder_workdir) to start its projections there.
"""

from gmia import cli
from gmia.inversion import latent_encoder_training

if __name__ == "__main__":
  cli.launch(latent_encoder_training.train_and_evaluate)
