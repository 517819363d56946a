"""Feature inversion of a split encoder at several layers.

  python -m attack.feature_inversion --workdir=runs/inversion \
      --config.network.path=runs/demo/face_encoder --config.data.resolution=32
"""

from gmia.jobs import feature_inversion


def get_config():
  return feature_inversion.default_config()
