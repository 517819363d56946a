r"""Trains a StyleGAN2 target generator on the member identities of a face data set.

  python -m train.train_gan --config=train/configs/gan_cpu_demo.py --workdir=/tmp/gan_demo
  python -m train.train_gan --config=train/configs/gan_auto.py:64 --workdir=... \
      --config.data.name=celeb_a --config.data.manual_dir=/data/celeba

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

from absl import app, flags

from gmia import cli, parallel
from gmia.gan import trainer

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and logs.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
