r"""Trains the face encoder (IResNet, ArcFace / CosFace head) on the split's encoder identities.

  python -m train.train_face_encoder --config=train/configs/face_encoder_cpu_demo.py \
      --workdir=/tmp/face_encoder

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

from gmia import cli
from gmia.face_encoder import trainer

if __name__ == "__main__":
  cli.launch(trainer.train_and_evaluate)
