r"""A seconds-long classifier run on a few synthetic identities: the trainer's end-to-end test.

  python -m train.train_classifier --config=train/configs/classifier_tiny.py \
      --workdir=/tmp/classifier_tiny
"""

import ml_collections

from gmia.classifier import trainer


def get_config() -> ml_collections.ConfigDict:
  config = trainer.default_config()
  config.data.update(resolution=32, identities=14, photos=10)
  config.data.split.update(members=2, non_members=2, shadow=0, reference_photos=2)
  config.eval_photos = 4  # 10 encoder identities: 60 training and 40 held-out photos.
  config.model.widths = (8, 8, 16)
  config.optimizer.warmup_steps = 5
  config.batch_size = 16
  config.num_steps = 100
  config.log_every = 10
  config.eval_every = 50
  config.checkpoint_every = 50
  return config
