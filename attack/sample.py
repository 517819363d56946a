r"""Draw a generator's samples by index, exactly as the attacks draw them.

  python -m attack.sample --workdir=runs/samples --config.generator=gmia:runs/demo/gan
  python -m attack.sample --workdir=runs/nearest --config.generator=gmia:runs/demo/gan \
      --config.indices=1824,2133

Any generator source works (gmia:, stylegan2_pkl:, onnx:, images:). Writes samples.npz (indices,
images u8[N, R, R, 3]), samples.png and, for --config.indices, sample_<i>.png each. With the seed
and chunk_size of an attack (its report.json), the images are the ones the attack scored.
"""

import os

from gmia import cli
from gmia.jobs import sample


def _show(summary, workdir):
  print(f"{len(summary['indices'])} samples of {summary['spec']} (seed {summary['seed']}) in "
        f"{workdir}: samples.npz, samples.png")


if __name__ == "__main__":
  cli.launch(sample.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "sample.py"))
