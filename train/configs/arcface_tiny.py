r"""A seconds-long ArcFace run on a few synthetic identities: the trainer's end-to-end test.

  python train/train_arcface.py --config=train/configs/arcface_tiny.py --workdir=/tmp/arcface_tiny
"""

import ml_collections

from gmia.data import run_data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = run_data.default_config()
  config.data.update(resolution=32, identities=30, photos=6)
  config.data.split.update(members=4, non_members=4, shadow=0, reference_photos=2)
  config.eval_identities = 5  # 17 training identities: centres padded on 8 devices.
  config.model = dict(blocks=(1, 1, 1, 1), width=4, num_features=16, dropout=0.0, input_size=32,
                      dtype="float32")
  config.margin = dict(kind="arcface", scale=64.0, margin=0.5, easy_margin=False)
  config.optimizer = dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=1)
  config.batch_size = 8
  config.num_steps = 4
  config.seed = 0
  config.log_every = 1
  config.eval_every = 2
  config.checkpoint_every = 2
  return config
