r"""Trains a DDPM target (a denoising U-Net) on the member identities of a face data set.

  python -m train.train_diffusion --config=train/configs/diffusion_cpu_demo.py \
      --workdir=/tmp/diffusion_demo
  python -m train.train_diffusion --config=train/configs/diffusion_64.py --workdir=... \
      --config.data.name=celeb_a --config.data.manual_dir=/data/celeba

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

from gmia import cli
from gmia.diffusion import trainer

if __name__ == "__main__":
  cli.launch(trainer.train_and_evaluate)
