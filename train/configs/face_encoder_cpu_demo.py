r"""ArcFace encoder for the embedded synthetic faces, trained in a few minutes on a laptop CPU.

  python -m train.train_face_encoder --config=train/configs/face_encoder_cpu_demo.py \
      --workdir=/tmp/face_encoder

Data: the default data block (1,000 synthetic identities x 20 photos at 64 px, members /
non-members / shadow 100 each); the 700 encoder identities minus 100 held out for evaluation
train it. The network sees 32 px (resized on device): identity lives in coarse shape and colour
here, and 4x fewer pixels make CPU training 4x faster. A narrow IResNet with one block per stage.

AdamW instead of insightface's SGD (lr 0.1): with a few thousand steps and no tuning budget,
Adam's per-parameter step sizes converge from scratch far faster on a tiny network. CosFace
(s=32, m=0.35) rather than ArcFace m=0.5: an additive cosine margin trains stably from random
initialisation without the warm-up tricks ArcFace needs on small data.

Measured (2 CPU cores, about 6 minutes): held-out 1-NN identification 99.7% against 12.5% for
1-NN on raw pixels; verification ROC AUC 0.998, TAR 0.82 at FAR 1e-3 and 0.96 at FAR 1e-2.
"""

import ml_collections

from gmia.face_encoder import trainer


def get_config() -> ml_collections.ConfigDict:
  config = trainer.default_config()
  config.eval_identities = 100
  config.model = dict(blocks=(1, 1, 1, 1), width=16, num_features=128, dropout=0.0,
                      input_size=32, dtype="float32")
  config.margin = dict(kind="cosface", scale=32.0, margin=0.35, easy_margin=False)
  config.optimizer = dict(name="adamw", learning_rate=3e-3, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=100)
  config.batch_size = 128
  config.num_steps = 1000
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  return config
