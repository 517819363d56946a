r"""insightface's recipe: IResNet-50, ArcFace (s=64, m=0.5), SGD lr 0.1, 112 px, on real photos.

  python -m train.train_face_encoder --config=train/configs/face_encoder_r50.py \
      --workdir=/ckpt/face_encoder_r50 \
      --config.data.manual_dir=/data/vggface2

VGGFace2 (CC BY-NC 4.0; put its files in manual_dir, see gmia/data/folders.py) at 128 px,
resized to 112 on device. No target identity is trained on: only the split's encoder identities
(every identity not drawn as member / non-member / shadow), 500 of them held out for evaluation.
Batch 128 per device as in insightface (global 1024 for 8 accelerators); the lr schedule is
insightface's polynomial decay (power 2) after a linear warm-up; weight decay 5e-4 on every
parameter. About 20 epochs of VGGFace2's 3.1M photos.
"""

import ml_collections

from gmia.face_encoder import trainer


def get_config() -> ml_collections.ConfigDict:
  config = trainer.default_config()  # IResNet-50, ArcFace s=64 m=0.5, SGD lr 0.1, 112 px.
  config.data.update(name="vggface2", resolution=128)
  config.data.split.update(members=500, non_members=500, shadow=500, reference_photos=10)
  config.eval_identities = 500
  config.optimizer.warmup_steps = 3000
  config.batch_size = 1024
  config.num_steps = 60000
  config.eval_every = 5000
  config.checkpoint_every = 2000
  return config
