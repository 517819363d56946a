r"""A seconds-long face encoder run on a few synthetic identities: the trainer's end-to-end test.

  python -m train.train_face_encoder --config=train/configs/face_encoder_tiny.py \
      --workdir=/tmp/face_encoder_tiny
"""

import ml_collections

from gmia.face_encoder import trainer


def get_config() -> ml_collections.ConfigDict:
  config = trainer.default_config()
  config.data.update(resolution=32, identities=30, photos=6)
  config.data.split.update(members=4, non_members=4, shadow=0, reference_photos=2)
  config.eval_identities = 5  # 17 training identities: centres padded on 8 devices.
  config.model = dict(blocks=(1, 1, 1, 1), width=4, num_features=16, dropout=0.0, input_size=32,
                      dtype="float32")
  config.optimizer.warmup_steps = 1
  config.batch_size = 8
  config.num_steps = 4
  config.log_every = 1
  config.eval_every = 2
  config.checkpoint_every = 2
  return config
