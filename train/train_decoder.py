r"""Trains feature decoders that invert a split network (with auxiliary photos or zero-shot).

  python train/train_decoder.py --config=train/configs/decoder_zero_shot_cpu_demo.py \
      --config.network.workdir=/tmp/arcface --workdir=/tmp/decoder_zero_shot

All layers of config.layers train in one run, one decoder each. Rerunning with the same
--workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import cli, parallel, progress  # noqa: E402
from gmia.inversion import decoder_training  # noqa: E402

cli.define_config()
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs, eval.json and "
                    "decoded.png.", required=True)


def main(argv):
  del argv
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  decoder_training.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
