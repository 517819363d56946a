r"""Decoders trained on auxiliary photos (He et al., ACSAC 2019) for the CPU demo encoder.

  python -m train.train_face_encoder --config=train/configs/face_encoder_cpu_demo.py \
      --config.data.resolution=32 --workdir=/tmp/face_encoder
  python -m train.train_decoder --config=train/configs/decoder_aux_cpu_demo.py \
      --config.network.path=/tmp/face_encoder --workdir=/tmp/decoder_aux

One decoder per split layer (stem, stage1, stage2), trained together on the 14,000 photos of the
700 encoder identities (none of them a victim), measured on 256 photos of the non-members.
Data at 32 px, the encoder's input size, as the encoder was trained.

Measured (2 CPU cores shared with other jobs, 1,500 steps in 14 min): PSNR / SSIM on the 256
non-member photos: stem 31.2 dB / 0.909, stage1 31.3 / 0.875, stage2 29.7 / 0.820; the best
constant image scores 14.7 dB / 0.166.
"""

import ml_collections

from gmia.inversion import decoder_training


def get_config() -> ml_collections.ConfigDict:
  config = decoder_training.default_config()
  config.method = "aux"
  config.data.resolution = 32
  config.layers = ("stem", "stage1", "stage2")
  config.decoder.width = 16  # The encoder's stem width: decoders no wider than the network.
  config.batch_size = 32
  config.aux.num_steps = 1500
  return config
