"""Release filter: drop generated samples too close to a training identity.

  python -m attack.filter --workdir=runs/filter \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/encoder

Writes kept.npz (the samples that pass), dropped.png and filter.json.
"""

import os

from attack import cli
from gmia.attacks import release_filter
from gmia.cli import run


def _show(result, workdir):
  print(f"dropped {result['dropped']} of {result['num_samples']} samples (similarity to a "
        f"training identity above {result['threshold']:.3f}); kept ones in "
        f"{os.path.join(workdir, 'kept.npz')}")


main = cli.entry_point("filter.py", release_filter.run, _show)

if __name__ == "__main__":
  run(main)
