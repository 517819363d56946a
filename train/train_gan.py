r"""Trains a StyleGAN2 target generator on the member identities of a face data set.

  python -m train.train_gan --config=train/configs/gan_cpu_demo.py --workdir=/tmp/gan_demo
  python -m train.train_gan --config=train/configs/gan_auto.py:64 --workdir=... \
      --config.data.name=celeb_a --config.data.manual_dir=/data/celeba

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

from gmia import cli
from gmia.gan import trainer

if __name__ == "__main__":
  cli.launch(trainer.train_and_evaluate)
