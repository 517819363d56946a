r"""Zero-shot decoders (Dong et al., arXiv 2107.06304) for the CPU demo encoder: no photos.

  python -m train.train_face_encoder --config=train/configs/face_encoder_cpu_demo.py \
      --config.data.resolution=32 --workdir=/tmp/face_encoder
  python -m train.train_decoder --config=train/configs/decoder_zero_shot_cpu_demo.py \
      --config.network.path=/tmp/face_encoder --workdir=/tmp/decoder_zero_shot

256 DeepInversion images synthesised from the encoder's batch-norm statistics, plus fresh noise
images (half of every batch); the inverse blocks train alone, then each split layer's chain
is fine-tuned with cycle consistency. Measured on the same 256 non-member photos as the aux
decoders (photos are only loaded for that measurement).

Measured (2 CPU cores shared with other jobs, 2,000 steps in 11 min, no real photo seen): PSNR /
SSIM on the 256 non-member photos: stem 32.0 dB / 0.958, stage1 26.9 / 0.820, stage2 24.6 /
0.725; the best constant image scores 14.7 dB / 0.166.
"""

import ml_collections

from gmia.inversion import decoder_training


def get_config() -> ml_collections.ConfigDict:
  config = decoder_training.default_config()
  config.method = "zero_shot"
  config.data.resolution = 32
  config.layers = ("stem", "stage1", "stage2")
  config.decoder.width = 16  # The encoder's stem width: decoders no wider than the network.
  config.batch_size = 32
  config.blocks.num_steps = 1000
  config.chain.num_steps = 1000
  return config
