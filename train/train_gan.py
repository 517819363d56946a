r"""Trains a StyleGAN2 target generator on the member identities of a face data set.

  python -m train.train_gan --config=train/configs/gan_cpu_demo.py --workdir=/tmp/gan_demo
  python -m train.train_gan --config=train/configs/gan_auto.py:64 --workdir=... \
      --config.data.name=celeb_a --config.data.manual_dir=/data/celeba

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel
from gmia.gan import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
