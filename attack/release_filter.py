"""Release filter: drop generated samples too close to a training identity.

  python -m attack.release_filter --workdir=runs/filter \
      --config.generator=gmia:runs/demo/gan --config.matcher.path=runs/demo/face_encoder

Writes kept.npz (the samples that pass), dropped.png and filter.json.
"""

import os

from gmia import cli
from gmia.jobs import release_filter


def _show(result, workdir):
  print(f"dropped {result['dropped']} of {result['num_samples']} samples (similarity to a "
        f"training identity above {result['threshold']:.3f}); kept ones in "
        f"{os.path.join(workdir, 'kept.npz')}")


if __name__ == "__main__":
  cli.launch(release_filter.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "release_filter.py"))
