"""Embed photos with a face matcher (see attack/embed_photos.py for the command)."""

from gmia.jobs import embed_photos as embed_photos_job


def get_config():
  return embed_photos_job.default_config()
