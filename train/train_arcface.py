r"""Trains the ArcFace identity encoder on the split's encoder identities.

  python train/train_arcface.py --config=train/configs/arcface_cpu_demo.py --workdir=/tmp/arcface

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import parallel  # noqa: E402
from gmia.encoder import trainer  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and eval.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  parallel.initialize_distributed()
  trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
