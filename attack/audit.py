"""Audit: was this person's face used to train the generator?

  python -m attack.audit --workdir=runs/audit --config.photos_dir=my_photos \
      --config.generator=gmia:runs/demo/gan --config.matcher.path=runs/demo/face_encoder

Prints the verdict in plain words and writes audit.json.
"""

import os

from gmia import cli
from gmia.jobs import audit

if __name__ == "__main__":
  cli.launch(audit.run, show=lambda result, _: print(result["verdict"]), default_config=os.path.join(
      os.path.dirname(__file__), "configs", "audit.py"))
