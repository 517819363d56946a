"""The main job on the embedded synthetic faces.

  python -m attack.run_all --workdir=runs/demo
  python -m attack.run_all --workdir=runs/demo --config.data.split.members=50
"""

import ml_collections

from gmia.data import run_data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = run_data.default_config()
  config.data.resolution = 32
  config.data.identities = 1000
  config.data.photos = 20
  config.overview_identities = 8  # Rows of the data overview figure.
  return config
