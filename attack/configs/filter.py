"""Filter a generator's samples before release.

  python -m attack.filter --workdir=runs/filter \
      --config.generator=gmia:runs/demo/gan --config.encoder_workdir=runs/demo/face_encoder
"""

from gmia.attacks import release_filter


def get_config():
  return release_filter.default_config()
