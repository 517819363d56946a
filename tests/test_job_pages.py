"""The jobs' report pages in a real browser: the toy main job's page and its two attack pages, an
audit's, the release filter's, the sample command's and embed_photos' load with no request
leaving the file, no console error and no broken image, fit a phone and a desktop without
scrolling sideways, and show the verdict and the numbers of the JSON report they were made from;
with report_photos off no image of a person is left. One browser serves the module."""

import hashlib
import json
import os
import shutil
import urllib.parse

import pytest
from PIL import Image

from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.jobs import (audit, embed_photos, inputs, membership, page_builders, page_parts,
                       release_filter, sample)
from gmia.runs import load_run
from tests.browser import PHONE, check_report_page, chromium  # noqa: F401 (fixture)


def _tiny(config, models):
  """The tiny attack settings of tests/test_attack_jobs.py on the shared tiny models."""
  config.generator, config.matcher.path = f"gmia:{models[0]}", models[1]
  config.num_samples, config.chunk_size, config.topk = 48, 16, 3
  config.bootstrap_resamples = 50
  return config


@pytest.fixture(scope="module")
def main_workdir(toy_main_job):
  """The toy main job's finished workdir (shared with the other tests of the session)."""
  return toy_main_job[0]


@pytest.fixture(scope="module")
def people(models, tmp_path_factory):
  """Identity folders DIR/<person>/<photo>.png of the reference photos of two members of the
  tiny models' split (synthetic faces), as a user would give them."""
  root = tmp_path_factory.mktemp("people")
  data = load_run(models[0], "gan").config.data
  arrays = run_data.load_dataset(data)
  split = IdentitySplit.load(os.path.join(models[0], run_data.SPLIT_FILE))
  for identity in split.identities("members")[:2].tolist():
    folder = root / f"person{identity}"
    folder.mkdir()
    chosen = arrays.select(split.reference[identity])
    for photo, image in zip(chosen.photo_id.tolist(), chosen.images):
      Image.fromarray(image).save(folder / f"photo{photo}.png")
  return root


@pytest.fixture(scope="module")
def audits(models, people, tmp_path_factory):
  """(workdir with photos, workdir without): an audit of a member's photo files, then the same
  audit again (resumed from a copy of its workdir) with report_photos off."""
  root = tmp_path_factory.mktemp("audits")
  config = _tiny(audit.default_config(), models)
  config.photos_dir = str(sorted(people.iterdir())[0])
  audit.run(config, str(root / "shown"))
  shutil.copytree(root / "shown", root / "hidden")
  config.report_photos = False
  audit.run(config, str(root / "hidden"))
  return root / "shown", root / "hidden"


def _read(path):
  with open(path) as handle:
    return json.load(handle)


def _images(tab):
  return tab.evaluate("Array.from(document.images).map(i => [i.alt, i.src])")


def test_the_main_jobs_pages(chromium, main_workdir):
  pages = {name: main_workdir / name / page_parts.PAGE_FILE
           for name in ("", "attack", "attack_control")}
  for name, page in pages.items():
    check_report_page(chromium, str(page), str(main_workdir / name / membership.REPORT_FILE))
  report = _read(main_workdir / membership.REPORT_FILE)
  with chromium.open(str(pages[""]), PHONE) as tab:
    # The headline AUCs are the attacks' own, and the links open their pages.
    shown = {key: value for key, value, _ in tab.numbers()}
    for name in ("attack", "attack_control"):
      attack = _read(main_workdir / name / membership.REPORT_FILE)
      auc = attack["metrics"][attack["primary"]]["auc"]
      assert shown[f"attacks.{name}.metrics.auc"] == auc
      assert f"AUC {page_builders.pages.format_number(auc)} (95% interval" in report["verdict"]
    links = tab.evaluate("Array.from(document.links).map(a => a.href)")
  assert [urllib.parse.unquote(urllib.parse.urlparse(link).path) for link in links] == [
      str(pages["attack"]), str(pages["attack_control"])]
  attack = _read(main_workdir / "attack" / membership.REPORT_FILE)
  with chromium.open(str(pages["attack"]), PHONE) as tab:
    text = tab.text()
    assert tab.evaluate("document.querySelectorAll('table.sortable tbody tr').length") == (
        len(attack["ranking"]) + 3)  # The people, and TPR at 3 FPRs.
    alts = [alt for alt, _ in _images(tab)]
  assert attack["verdict"].startswith("The attack tells the generator's 4 members from 4 ")
  assert "TPR at FPR 0.00100, 0.0100, 0.100 is not measured" in attack["verdict"]
  assert alts[0].startswith("ROC of every score variant") and alts[1].startswith("histogram")
  assert alts[2].startswith("The most exposed people")  # matches.png.
  nearest = ",".join(str(n["sample"]) for n in attack["ranking"][0]["nearest"])
  assert (f"--config.seed={attack['config']['seed']} --config.chunk_size={attack['chunk_size']}"
          f" --config.indices={nearest}") in text


def test_an_audits_page(chromium, audits, people):
  shown, _ = audits
  result = _read(shown / audit.REPORT_FILE)
  check_report_page(chromium, str(shown / page_parts.PAGE_FILE), str(shown / audit.REPORT_FILE))
  with chromium.open(str(shown / page_parts.PAGE_FILE), PHONE) as tab:
    assert tab.verdict() == [("verdict", result["verdict"])]
    numbers = {key: text for key, _, text in tab.numbers()}
    faces = tab.evaluate("Array.from(document.querySelectorAll('.photos li p'))"
                         ".map(p => p.firstChild.textContent)")
    text = tab.text()
  photos = sorted(os.listdir(sorted(people.iterdir())[0]))
  assert sorted(faces[:len(photos)]) == photos and faces[len(photos):] == ["generated"] * len(
      result["nearest"])
  assert numbers["p_value"] == page_builders.pages.format_number(result["p_value"])
  assert numbers["min_p_value"] == "0.200" and result["min_p_value"] == 1 / 5  # 4 people.
  assert "no result could have gone below p = 0.2" in result["verdict"]
  assert [int(numbers[f"nearest.{i}.sample"]) for i in range(len(result["nearest"]))] == [
      n["sample"] for n in result["nearest"]]
  indices = ",".join(str(n["sample"]) for n in result["nearest"])
  assert (f"--config.seed={result['config']['seed']} --config.chunk_size="
          f"{result['chunk_size']} --config.indices={indices}") in text
  assert len(result["population_scores"]) == result["population_size"] == 4
  assert "set_p_value" in numbers and "counts photos of one face as independent" in text


def test_report_photos_off_leaves_no_image_of_a_person(chromium, audits, people):
  shown, hidden = audits
  with chromium.open(str(shown / page_parts.PAGE_FILE), PHONE) as tab:
    faces = {src for alt, src in _images(tab) if not alt.startswith("histogram")}
  with chromium.open(str(hidden / page_parts.PAGE_FILE), PHONE) as tab:
    assert tab.problems() == []
    left = _images(tab)
    withheld = " ".join(tab.evaluate("Array.from(document.querySelectorAll('.withheld'))"
                                     ".map(e => e.textContent)"))
  assert len(faces) == 2 + 3 and [alt.split(" ")[0] for alt, _ in left] == ["histogram"]
  html = (hidden / page_parts.PAGE_FILE).read_text()
  assert not any(face in html for face in faces)
  # Each photo file left out is named by its sha256, as sha256sum begins it.
  for photo in sorted(people.iterdir())[0].iterdir():
    assert hashlib.sha256(photo.read_bytes()).hexdigest()[:16] in withheld
  assert _read(hidden / audit.REPORT_FILE)["verdict"] == _read(shown / audit.REPORT_FILE)[
      "verdict"]


def test_filter_sample_and_embed_pages(chromium, models, people, tmp_path):
  config = _tiny(release_filter.default_config(), models)
  config.threshold = 0.999
  release_filter.run(config, str(tmp_path / "filter"))
  config = sample.default_config()
  config.generator, config.indices, config.chunk_size = f"gmia:{models[0]}", "3,17,5", 16
  sample.run(config, str(tmp_path / "sample"))
  config = embed_photos.default_config()
  config.photos_dir, config.matcher.path = str(people), models[1]
  embed_photos.run(config, str(tmp_path / "embed"))
  for name, report in (("filter", release_filter.REPORT_FILE), ("sample", sample.REPORT_FILE),
                       ("embed", embed_photos.REPORT_FILE)):
    check_report_page(chromium, str(tmp_path / name / page_parts.PAGE_FILE),
                      str(tmp_path / name / report))
  with chromium.open(str(tmp_path / "sample" / page_parts.PAGE_FILE), PHONE) as tab:
    assert [int(text) for key, _, text in tab.numbers() if key.startswith("indices.")] == [
        3, 17, 5]
    assert len(_images(tab)) == 3
  embedded = _read(tmp_path / "embed" / embed_photos.REPORT_FILE)
  assert embedded["verdict"].startswith(f"{embedded['used']} of {embedded['photos']} photos")


def test_inputs_with_an_undefined_number_are_the_same_inputs(tmp_path):
  """A NaN setting is recorded as null, and a rerun with it compares equal (NaN != NaN)."""
  record = {"generator": {"digest": "ab12"}, "rate": float("nan"), "people": {3: "member"}}
  inputs.check_inputs(str(tmp_path), record, overwrite=False, outputs=())
  text = (tmp_path / inputs.INPUTS_FILE).read_text()
  assert "NaN" not in text and json.loads(text)["rate"] is None
  inputs.check_inputs(str(tmp_path), record, overwrite=False, outputs=())
  with pytest.raises(ValueError, match="other inputs .rate: None there, 0.5 now"):
    inputs.check_inputs(str(tmp_path), {**record, "rate": 0.5}, overwrite=False, outputs=())
