"""Embed a folder of photos with a face matcher and look at what it saw.

  python -m attack.embed_photos --workdir=OUT --config.photos_dir=DIR \
      --config.matcher.path=face_recognition_sface_2021dec_int8bq.onnx \
      --config.matcher.preset=sface --config.align=detect \
      --config.detector_onnx=face_detection_yunet_2023mar.onnx

DIR is a flat folder of photos or identity folders DIR/<person>/<photo>. Writes embeddings.npz
(paths, identity, aligned, embeddings), faces.png, skipped.csv, and with identity folders
similarity.png and the same- and different-person similarity ranges in report.json.
"""

import os

from gmia import cli
from gmia.jobs import embed_photos as embed_photos_job


def _show(result, workdir):
  print(f"{result['used']} of {result['photos']} photos embedded ({result['skipped']} skipped) "
        f"by {result['matcher']}, align={result['align']}")
  if "separated" in result:
    print(f"same person: {result['same_person_min']:.3f} .. {result['same_person_max']:.3f}; "
          f"different people: {result['different_person_min']:.3f} .. "
          f"{result['different_person_max']:.3f}; every same-person pair above every "
          f"different-person pair: {result['separated']}")
  print(f"files in {workdir}")


if __name__ == "__main__":
  cli.launch(embed_photos_job.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "embed_photos.py"))
