"""Audit: was this person's face used to train the generator?

  python -m attack.audit --workdir=runs/audit --config.photos_dir=my_photos \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/encoder

Prints the verdict in plain words and writes audit.json.
"""

from attack import cli
from gmia.attacks import audit
from gmia.cli import run

main = cli.entry_point("audit.py", audit.run, lambda result, _: print(result["verdict"]))

if __name__ == "__main__":
  run(main)
