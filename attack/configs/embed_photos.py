"""Embed photos with a face matcher (see attack/embed_photos.py for the command)."""

from gmia.faces import photo_job


def get_config():
  return photo_job.default_config()
