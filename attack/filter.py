"""Release filter: drop generated samples too close to a training identity.

  python -m attack.filter --workdir=runs/filter \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/encoder

Writes kept.npz (the samples that pass), dropped.png and filter.json.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.attacks import release_filter

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "filter.py"), "Filter config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the kept samples go.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  result = release_filter.run(_CONFIG.value, _WORKDIR.value)
  print(f"dropped {result['dropped']} of {result['num_samples']} samples (similarity to a "
        f"training identity above {result['threshold']:.3f}); kept ones in "
        f"{os.path.join(_WORKDIR.value, 'kept.npz')}")


if __name__ == "__main__":
  app.run(main)
