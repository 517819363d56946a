"""Audit one person against a generator.

  python -m attack.audit --workdir=runs/audit --config.photos_dir=my_photos \
      --config.generator=gmia:runs/demo/gan --config.matcher.path=runs/demo/face_encoder
"""

from gmia.jobs import audit


def get_config():
  return audit.default_config()
