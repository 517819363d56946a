"""Identity membership attack against a trained generator.

  python -m attack.identity_membership --workdir=runs/attack \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/face_encoder
  # with insightface's released encoder (112 px faces):
  python -m attack.identity_membership --workdir=runs/attack \
      --config.generator_workdir=runs/gan --config.encoder_onnx=w600k_r50.onnx
"""

from gmia.attacks import membership_job


def get_config():
  return membership_job.default_config()
