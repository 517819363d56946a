r"""Trains the ResNet classifier of the encoder identities: the victim of split-network studies.

  python train/train_classifier.py --config=train/configs/classifier_cpu_demo.py \
      --workdir=/tmp/classifier

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import cli, parallel, progress  # noqa: E402
from gmia.classifier import trainer  # noqa: E402

cli.define_config()
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and eval.json.",
                    required=True)


def main(argv):
  del argv
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
