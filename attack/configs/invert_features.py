"""Feature inversion of a split encoder at several layers.

  python -m attack.invert_features --workdir=runs/inversion \
      --config.encoder_workdir=runs/demo/face_encoder --config.data.resolution=32
"""

from gmia.inversion import feature_job


def get_config():
  return feature_job.default_config()
