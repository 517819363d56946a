r"""ResNet classifier of the synthetic encoder identities, trained in minutes on a laptop CPU.

  python train/train_classifier.py --config=train/configs/classifier_cpu_demo.py \
      --workdir=/tmp/classifier

Data: the default data block (1,000 synthetic identities x 20 photos at 64 px, members /
non-members / shadow 100 each): the 700 encoder identities are the classes, 4 photos of each held
out for evaluation. The network sees 32 px (resized on device). Widths 16/32/64, one basic block
per stage. AdamW with a short warm-up, as for the encoder.

Measured: TODO.
"""

import ml_collections

from gmia.data import run_data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = run_data.default_config()
  config.eval_photos = 4
  config.model = dict(widths=(16, 32, 64), blocks=(1, 1, 1), strides=(1, 2, 2), input_size=32,
                      dtype="float32")
  config.optimizer = dict(name="adamw", learning_rate=3e-3, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=50)
  config.mirror = False
  config.batch_size = 128
  config.num_steps = 600
  config.seed = 0
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200
  return config
