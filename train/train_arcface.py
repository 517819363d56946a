r"""Trains the ArcFace identity encoder on the split's encoder identities.

  python train/train_arcface.py --config=train/configs/arcface_cpu_demo.py --workdir=/tmp/arcface

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import cli, parallel  # noqa: E402
from gmia.encoder import trainer  # noqa: E402

cli.define_config()
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and eval.json.",
                    required=True)


def main(argv):
  del argv
  parallel.initialize_distributed()
  trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
