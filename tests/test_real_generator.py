"""A generator gmia did not train, end to end: the `gan-face-generate` DCGAN (tests/dcgan.py) as
`onnx:` and as `images:` (a folder of its samples), audited with the real SFace matcher and YuNet
detection against targets and a population made of real photos (tests/assets.py).

None of the real people is in the DCGAN's training data (DigiFace-1M's synthetic faces): the point
is the plumbing on real networks and photos, and that both forms of one generator agree.
"""

import csv
import json
import os

import numpy as np
import pytest

from gmia import parallel, sources, viz
from gmia.jobs import audit, membership
from gmia.onnx import import_onnx
from tests import assets, dcgan

TARGETS = ("macron", "ardern")
NUM_SAMPLES = 16


@pytest.fixture(scope="module")
def generator_path(tmp_path_factory):
  return dcgan.onnx_path(str(tmp_path_factory.mktemp("dcgan")))


@pytest.fixture(scope="module")
def people(tmp_path_factory):
  """(targets_dir, population_dir): identity folders of the real photos, linked."""
  root = tmp_path_factory.mktemp("people")
  for person, path in assets.photos():
    group = "targets" if person in TARGETS else "population"
    folder = root / group / person
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink(path, folder / os.path.basename(path))
  return str(root / "targets"), str(root / "population")


def attack_config(generator: str, people):
  config = membership.default_config()
  config.generator = generator
  config.matcher.update(path=assets.sface_path(), preset="sface")
  config.align, config.detector_onnx, config.detect_score = "detect", assets.yunet_path(), 0.6
  config.sample_detector_size = 160  # 64 px faces: 16x faster than 640, and finds more.
  config.targets_dir, config.population_dir = people
  config.num_samples, config.chunk_size, config.topk = NUM_SAMPLES, 8, 2
  config.matches_rows = 2
  return config


def test_the_weights_read_without_torch_equal_torch_load():
  """Every tensor of the state dict as gmia's reader gives it against torch.load of the same
  file (tests/fixtures/gan_face_generate/torch_load.json, recorded with torch 2.13): shape,
  dtype, sum, sum of magnitudes and an order-sensitive weighted sum, which a transposed or
  shuffled tensor changes."""
  with open(os.path.join(os.path.dirname(__file__), "fixtures", "gan_face_generate",
                         "torch_load.json")) as handle:
    recorded = json.load(handle)["tensors"]
  weights = dcgan.state_dict()
  assert sorted(weights) == sorted(recorded)
  for name, want in recorded.items():
    tensor = np.asarray(weights[name])
    assert list(tensor.shape) == want["shape"] and tensor.dtype == want["dtype"], name
    flat = tensor.ravel().astype(np.float64)
    got = {"sum": flat.sum(), "abs_sum": np.abs(flat).sum(),
           "weighted_sum": (flat * np.arange(1, flat.size + 1)).sum() / flat.size}
    for field, value in got.items():
      # Float64 sums of the same float32 values, in another order: agree to ~1e-15 relative.
      np.testing.assert_allclose(value, want[field], rtol=1e-10, atol=1e-10,
                                 err_msg=f"{name} {field}")


def test_the_translated_generator_equals_onnxruntime(generator_path):
  net = import_onnx(generator_path)
  session = assets.onnxruntime_session(generator_path)
  z = np.random.default_rng(0).normal(size=(1, dcgan.Z_DIM, 1, 1)).astype(np.float32)
  want = session.run(None, {"z": z})[0]
  got = np.asarray(net.apply(net.params, z))
  assert want.shape == (1, 3, 64, 64) and np.abs(want).max() > 0.5
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


@pytest.fixture(scope="module")
def onnx_attack(generator_path, people, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("onnx_attack"))
  return workdir, membership.run(attack_config(f"onnx:{generator_path}", people), workdir)


def test_attack_on_the_onnx_generator_ranks_every_target(onnx_attack):
  workdir, summary = onnx_attack
  assert summary["people"] == {"member": 0, "target": 2, "population": 3}
  assert summary["metrics"] == {}  # No known member: no ROC, a ranking with p-values.
  assert [e["name"] for e in summary["ranking"]] and {
      e["name"] for e in summary["ranking"]} == set(TARGETS)
  assert all(0.25 <= e["p_value"] <= 1 for e in summary["ranking"])  # 1/(1+3) at the least.
  # Most DCGAN faces are found by YuNet at score 0.6 (measured: 29 of 32); none is lost silently.
  assert summary["usable_samples"] + summary["samples_without_face"] == NUM_SAMPLES
  assert summary["usable_samples"] >= NUM_SAMPLES // 2
  assert summary["photos"] == {"used": 10, "skipped": 0}
  with open(os.path.join(workdir, "scores.csv")) as handle:
    rows = list(csv.DictReader(handle))
  assert sorted(r["identity"] for r in rows) == ["ardern", "biden", "macron", "obama", "sunak"]
  for name in ("matches.png", "samples.csv", "skipped.csv", "inputs.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert not os.path.exists(os.path.join(workdir, "roc.png"))


def test_the_same_samples_as_images_give_the_same_scores(generator_path, people, onnx_attack,
                                                         tmp_path):
  config = attack_config(f"onnx:{generator_path}", people)
  source = sources.open_source(config)
  samples = viz.to_uint8(np.asarray(source.sample(np.arange(NUM_SAMPLES), parallel.make_mesh())))
  folder = tmp_path / "samples"
  folder.mkdir()
  for i, image in enumerate(samples):
    viz.save_png(str(folder / f"{i:05d}.png"), image)
  as_images = membership.run(attack_config(f"images:{folder}", people), str(tmp_path / "a"))
  _, as_onnx = onnx_attack
  # The images are the generator's samples quantised to 8 bits, as a service hands them out.
  assert as_images["usable_samples"] == as_onnx["usable_samples"]
  got = {e["name"]: e["score"] for e in as_images["ranking"]}
  want = {e["name"]: e["score"] for e in as_onnx["ranking"]}
  assert got.keys() == want.keys()
  for name in want:
    assert abs(got[name] - want[name]) < 0.02, (name, got[name], want[name])
  # A white-box attack on a black-box source is named as such.
  config.generator = f"images:{folder}"
  with pytest.raises(ValueError, match="needs a StyleGAN2 generator .* images source"):
    sources.require(sources.open_source(config), sources.STYLEGAN, "projection")


def test_audit_of_one_person_and_a_changed_input_is_refused(generator_path, people, tmp_path):
  config = audit.default_config()
  config.update(attack_config(f"onnx:{generator_path}", people).to_dict())
  config.update(targets_dir="", photos_dir=os.path.join(people[0], "macron"))
  result = audit.run(config, str(tmp_path))
  assert result["person"] == "macron" and result["population_size"] == 3
  assert result["p_value"] >= 0.25 and "known not to be in its training set" in result["verdict"]
  config.photos_dir = os.path.join(people[0], "ardern")
  with pytest.raises(ValueError, match="holds results of other inputs .people"):
    audit.run(config, str(tmp_path))
