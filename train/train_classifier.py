r"""Trains the ResNet classifier of the encoder identities: the victim of split-network studies.

  python -m train.train_classifier --config=train/configs/classifier_cpu_demo.py \
      --workdir=/tmp/classifier

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

from gmia import cli
from gmia.classifier import trainer

if __name__ == "__main__":
  cli.launch(trainer.train_and_evaluate)
