r"""A seconds-long classifier run on a few synthetic identities: the trainer's end-to-end test.

  python train/train_classifier.py --config=train/configs/classifier_tiny.py \
      --workdir=/tmp/classifier_tiny
"""

import ml_collections

from gmia.data import run_data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = run_data.default_config()
  config.data.update(resolution=32, identities=14, photos=10)
  config.data.split.update(members=2, non_members=2, shadow=0, reference_photos=2)
  config.eval_photos = 4  # 10 encoder identities: 60 training and 40 held-out photos.
  config.model = dict(widths=(8, 8, 16), blocks=(1, 1, 1), strides=(2, 2, 2), input_size=32,
                      dtype="float32")
  config.optimizer = dict(name="adamw", learning_rate=2e-2, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=5)
  config.mirror = False
  config.batch_size = 16
  config.num_steps = 100
  config.seed = 0
  config.log_every = 10
  config.eval_every = 50
  config.checkpoint_every = 50
  return config
