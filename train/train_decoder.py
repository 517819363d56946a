r"""Trains feature decoders that invert a split network (with auxiliary photos or zero-shot).

  python -m train.train_decoder --config=train/configs/decoder_zero_shot_cpu_demo.py \
      --config.network.path=/tmp/face_encoder --workdir=/tmp/decoder_zero_shot

All layers of config.layers train in one run, one decoder each. Rerunning with the same
--workdir resumes from its latest checkpoint.
"""

from gmia import cli
from gmia.inversion import decoder_training

if __name__ == "__main__":
  cli.launch(decoder_training.train_and_evaluate)
