"""Filter a generator's samples before release.

  python -m attack.release_filter --workdir=runs/filter \
      --config.generator=gmia:runs/demo/gan --config.matcher.path=runs/demo/face_encoder
"""

from gmia.jobs import release_filter


def get_config():
  return release_filter.default_config()
