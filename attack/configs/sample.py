"""Draw samples of a generator (see attack/sample.py for the command)."""

from gmia.jobs import sample


def get_config():
  return sample.default_config()
