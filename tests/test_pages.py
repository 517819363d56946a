"""Report pages (gmia.jobs.pages) opened in a real browser: a synthetic report with every kind of
evidence loads offline with no console error or broken image, fits a phone and a desktop, shows
the numbers of report.json, sorts its tables, escapes what it shows, and leaves photos of people
out when asked."""

import hashlib
import json
import math
import os

import jax
import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

import gmia
from gmia import files
from gmia.jobs import pages
from tests.browser import (DESKTOP, PHONE, check_report_page, chromium,  # noqa: F401 (fixture)
                           differences_from_report)

HOSTILE = 'Eve <script>alert("x")</script> & "friends"'


def synthetic_job(folder, rng_seed: int = 0):
  """(report, page, person photo files) of an audit-like job, report.json written."""
  rng = np.random.default_rng(rng_seed)
  person_photos = []
  for i, size in enumerate([(400, 300), (90, 120)]):  # One shrunk to a JPEG thumbnail.
    yy, xx = np.mgrid[:size[1], :size[0]]
    pixels = np.stack([xx * 255 // size[0], yy * 255 // size[1], (xx + yy + 40 * i) % 256], -1)
    path = os.path.join(folder, f"photo{i}.{'jpg' if i == 0 else 'png'}")
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    person_photos.append(path)
  population = rng.normal(0.30, 0.05, 300)
  ranking = [{"rank": i + 1, "name": name, "score": float(score), "p_value": p}
             for i, (name, score, p) in enumerate([("ada", 0.71, 0.004), (HOSTILE, 0.52, 0.2),
                                                   ("bo", 0.33, None), ("cy", 0.61, 0.031)])]
  report = {
      "verdict": "Your face: likely used to train the generator (p = 0.0149).",
      "auc": np.float32(0.8103448), "auc_interval": [0.7133, 0.9021], "p_value": 0.0149,
      "min_p_value": 1 / 301, "undefined": float("nan"), "population_scores": population,
      "score": 0.4512, "ranking": ranking, "people": {np.int64(7): 12, 8: 30},
      "nearest": [{"index": int(i), "similarity": float(s)}
                  for i, s in zip(rng.integers(0, 10**6, 3), rng.random(3))],
      "provenance": pages.provenance({"generator": {"kind": "gmia", "sha256": "0123abcd" * 2}},
                                     {"seed": 3, "matcher": {"path": "/models/" * 20}}, 12.5)}
  files.write_json(os.path.join(folder, "report.json"), report)

  roc = matplotlib.figure.Figure(figsize=(4, 4))
  axes = roc.add_subplot()
  axes.plot([0, 0.1, 1], [0, 0.6, 1])
  axes.set_xlabel("false positive rate")
  matches = os.path.join(folder, "matches.png")
  Image.fromarray(rng.integers(0, 255, (64, 256, 3), dtype=np.uint8)).save(matches)
  samples = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)  # A toy generator's faces.
  gallery = [pages.Photo(path, f"your photo {i + 1}") for i, path in enumerate(person_photos)]
  gallery += [pages.Photo(samples[i], "generated", {"sample": f"nearest.{i}.index",
                                                    "similarity": f"nearest.{i}.similarity"},
                          person=False) for i in range(3)]
  page = pages.Page(
      title=f"Audit of {HOSTILE}", report=report, verdict=["verdict"], sections=[
          pages.Section("The evidence", [
              pages.Number("AUC", "auc", "auc_interval", "0.5 is chance"),
              pages.Number("p-value", "p_value"), pages.Number("undefined", "undefined"),
              pages.Number("photos of person 7", "people.7"),
              pages.Text("The smallest p-value {{300 people}} can give is {min_p_value}.")]),
          pages.Section("Where your score falls", [pages.Histogram(
              "population_scores", "score", "you", "best similarity", "300 people.")]),
          pages.Section("Figures", [pages.Figure(roc, "ROC", alt=f'ROC "{HOSTILE}"'),
                                    pages.Figure(matches, "matches", shows_people=True)]),
          pages.Section("Faces", [pages.Gallery(gallery, "Your photos and the nearest faces")]),
          pages.Section("People", [pages.Table("ranking", {
              "rank": "rank", "person": "name", "score": "score", "p-value": "p_value"},
              caption="ranked people")]),
          pages.Section("More", [pages.Link("the sweep's first point", "points/0/report.html")]),
      ])
  return report, page, person_photos


def test_a_report_page_in_the_browser(chromium, tmp_path):
  _, page, _ = synthetic_job(str(tmp_path))
  path = str(tmp_path / pages.PAGE_FILE)
  pages.render_page(path, page)
  check_report_page(chromium, path, str(tmp_path / "report.json"))
  with open(path) as handle:
    html = handle.read()
  assert pages.render_html(page) == html  # The same report gives the same page.
  assert "http://" not in html.replace("http://www.w3.org/", "") and "https://" not in html
  with open(tmp_path / "report.json") as handle:
    saved = json.load(handle)
  with chromium.open(path, PHONE) as tab:
    assert tab.verdict() == [("verdict", saved["verdict"])]
    shown = {key: text for key, _, text in tab.numbers()}
    assert shown["auc"] == "0.810" and saved["auc"] == float(np.float32(0.8103448))
    assert shown["auc_interval.0"] == "0.713" and shown["undefined"] == "n/a"
    assert shown["ranking.2.p_value"] == "n/a" and shown["nearest.1.index"] == str(
        saved["nearest"][1]["index"])
    text = tab.text()
    assert f"smallest p-value {{300 people}} can give is {shown['min_p_value']}." in text
    assert gmia.__version__ in text and "wall time" in text
    # Two figures, the histogram and five faces; the table scrolls in its box, not the page.
    assert tab.evaluate("document.images.length") == 8
    assert tab.evaluate("document.querySelector('.table-box').scrollWidth") > 0
    assert tab.evaluate("getComputedStyle(document.querySelector('.table-box')).overflowX") \
        == "auto"
    # A page holds one script, its own, and forbids fetching anything.
    assert tab.evaluate("document.scripts.length") == 1
    policy = tab.evaluate("document.querySelector('meta[http-equiv]').content")
    assert "default-src 'none'" in policy and "img-src data:" in policy


def test_a_wrong_number_on_the_page_is_found(chromium, tmp_path):
  """The comparison with report.json can fail: a page from another report differs from it."""
  _, page, _ = synthetic_job(str(tmp_path), rng_seed=0)
  path = str(tmp_path / pages.PAGE_FILE)
  pages.render_page(path, page)
  synthetic_job(str(tmp_path), rng_seed=1)  # Rewrites report.json.
  with open(tmp_path / "report.json") as handle:
    saved = json.load(handle)
  with chromium.open(path, PHONE) as tab:
    found = differences_from_report(tab, saved)
  assert any(line.startswith("nearest.0.index:") for line in found)
  assert not any(line.startswith("auc:") for line in found)


def test_sorting_a_table_by_a_heading(chromium, tmp_path):
  report, page, _ = synthetic_job(str(tmp_path))
  path = str(tmp_path / pages.PAGE_FILE)
  pages.render_page(path, page)
  column = "Array.from(document.querySelectorAll('table.sortable tbody tr')).map(r => " \
           "r.cells[{}].dataset.sort)"
  with chromium.open(path, DESKTOP) as tab:
    def click(heading):
      tab.evaluate(f"Array.from(document.querySelectorAll('table.sortable th button')).find("
                   f"b => b.textContent === '{heading}').click()")

    click("score")
    scores = [row["score"] for row in report["ranking"]]
    assert [float(v) for v in tab.evaluate(column.format(2))] == sorted(scores)
    click("score")
    assert [float(v) for v in tab.evaluate(column.format(2))] == sorted(scores, reverse=True)
    click("p-value")  # The undefined p-value goes last either way.
    defined = sorted(row["p_value"] for row in report["ranking"] if row["p_value"] is not None)
    assert tab.evaluate(column.format(3)) == [json.dumps(float(p)) for p in defined] + [""]
    click("person")
    names = [row["name"] for row in report["ranking"]]
    assert tab.evaluate(column.format(1)) == sorted(names, key=str.lower)
    assert tab.problems() == []


def test_hostile_text_is_shown_as_text(chromium, tmp_path):
  _, page, _ = synthetic_job(str(tmp_path))
  path = str(tmp_path / pages.PAGE_FILE)
  pages.render_page(path, page)
  with open(path) as handle:
    html = handle.read()
  assert "<script>alert" not in html and "&lt;script&gt;alert" in html
  with chromium.open(path, PHONE) as tab:
    assert tab.evaluate("document.title") == f"Audit of {HOSTILE}"
    assert tab.evaluate("document.scripts.length") == 1
    assert HOSTILE in tab.evaluate("document.querySelector('table.sortable').innerText")
    assert tab.evaluate("document.images[1].alt") == f'ROC "{HOSTILE}"'
    assert tab.problems() == []


def test_photos_of_people_left_out(chromium, tmp_path):
  _, page, photos = synthetic_job(str(tmp_path))
  shown, hidden = str(tmp_path / "shown.html"), str(tmp_path / "hidden.html")
  pages.render_page(shown, page, show_photos=True)
  pages.render_page(hidden, page, show_photos=False)
  sources = "Array.from(document.querySelectorAll('{}')).map(i => i.src)"
  with chromium.open(shown, PHONE) as tab:
    faces = tab.evaluate(sources.format(".photos img"))
    figures = tab.evaluate(sources.format(".figure img"))
  assert len(faces) == 5 and len(figures) == 3
  people = set(faces[:2]) | {figures[2]}  # The two photos and the matches figure.
  with chromium.open(hidden, PHONE) as tab:
    assert tab.problems() == []
    remaining = tab.evaluate(sources.format("img"))
    assert not people & set(remaining)
    # What is left: the ROC, the histogram and the toy generator's faces.
    assert remaining == figures[:2] + faces[2:]
    withheld = tab.evaluate("Array.from(document.querySelectorAll('.withheld'))"
                            ".map(e => e.textContent)")
  with open(hidden) as handle:
    html = handle.read()
  assert not any(source in html for source in people)
  # Each left-out photo is named by the start of its file's sha256, as sha256sum prints it.
  for photo in photos:
    with open(photo, "rb") as handle:
      digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    assert sum(digest in text for text in withheld) == 1
  with open(tmp_path / "matches.png", "rb") as handle:
    assert hashlib.sha256(handle.read()).hexdigest()[:16] in withheld[0]


def test_the_harness_finds_what_a_page_must_not_do(chromium, tmp_path):
  """A page that fetches, fails, breaks an image and is too wide: each fault is reported."""
  bad = tmp_path / "bad.html"
  bad.write_text(
      '<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width">'
      '<link rel="stylesheet" href="https://fonts.example.com/a.css"></head><body>'
      '<img src="data:image/png;base64,AAAA" alt="broken"><div style="width:900px">wide</div>'
      '<script>console.error("boom")</script></body></html>')
  blank = tmp_path / "blank.html"
  blank.write_text("<!DOCTYPE html><html><body></body></html>")
  with chromium.open(str(bad), PHONE) as tab:
    found = tab.problems()
  assert "request leaving the file: https://fonts.example.com/a.css" in found
  assert "console: boom" in found and "broken image: broken" in found
  assert f"scrolls sideways at {PHONE} px: 908 px wide" in found
  with chromium.open(str(blank), PHONE) as tab:
    found = tab.problems()
  assert any(line.startswith("blank screenshot") for line in found)
  assert any(line.startswith("laid out 980 px wide") for line in found)


def test_format_number():
  assert [pages.format_number(v) for v in (0.8103448, 0.5, 12, 12.0, 0.0149, 1 / 301, 1234.56,
                                           2.5e-5, 3e7, 0.0, -0.25, None, True, np.int64(7),
                                           np.float32(math.nan))] == [
      "0.810", "0.500", "12", "12.0", "0.0149", "0.00332", "1235", "2.50e-05", "3.00e+07", "0",
      "-0.250", "n/a", "yes", "7", "n/a"]
  # Three significant digits: within half a unit of the third digit.
  for value in np.random.default_rng(0).uniform(-3, 3, 200):
    value = float(np.sign(value) * 10 ** abs(value) / 10)  # 1e-4 .. 100, both signs.
    shown = float(pages.format_number(value))
    assert abs(shown - value) <= 0.5 * 10 ** (math.floor(math.log10(abs(value))) - 2) * 1.0001
  with pytest.raises(TypeError, match="takes a number, not str"):
    pages.format_number("0.5")


def test_provenance():
  record = pages.provenance({"photos": "abc"}, {"seed": 1, "rate": math.inf}, math.nan)
  assert record["gmia_version"] == gmia.__version__ and record["inputs"] == {"photos": "abc"}
  assert record["config"] == {"seed": 1, "rate": None} and record["seconds"] is None
  assert jax.devices()[0].device_kind in record["machine"]["devices"]
  assert record["machine"]["cpu_cores"] == os.cpu_count() and record["date"].endswith("+00:00")


def test_a_page_that_cannot_be_made_leaves_the_old_one(tmp_path):
  report, page, _ = synthetic_job(str(tmp_path))
  path = str(tmp_path / pages.PAGE_FILE)
  pages.render_page(path, page)
  with open(path) as handle:
    before = handle.read()
  broken = [pages.Section("s", [pages.Number("AUC", "roc.auc")]),
            pages.Section("s", [pages.Table("ranking", {"x": "missing"})]),
            pages.Section("s", [pages.Text("p = {p_value:.2f}")]),
            pages.Section("s", [pages.Link("elsewhere", "https://example.com")]),
            pages.Section("s", [pages.Number("list", "ranking")]),
            pages.Section("s", [pages.Figure(str(tmp_path / "none.png"), "missing")])]
  messages = ["the report has no 'roc'", "the report has no 'ranking.0.missing'",
              "no format spec", "must be relative", "'ranking' is not a number",
              "none.png: cannot read"]
  for sections, message in zip(broken, messages):
    with pytest.raises(ValueError, match=message):
      pages.render_page(path, pages.Page("t", report, ["verdict"], [sections]))
  with open(path) as handle:
    assert handle.read() == before
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["matches.png", "photo0.jpg", "photo1.png", "report.html", "report.json"])
