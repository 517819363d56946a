"""The pieces every report page is made of: where a result came from, how a page is written beside a
job's files, and the words, numbers and tables an AUC or a TPR is shown with."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax

from gmia import files
from gmia.jobs import pages
from gmia.jobs.inputs import INPUTS_FILE

PAGE_FILE = pages.PAGE_FILE
MATCHES_FILE = "matches.npz"
# A sample page shows at most this many faces one by one (samples.png holds them all).
GALLERY_LIMIT = 64
ATTACK_NAMES = {"black_box": "full black-box: the nearest of the generated samples",
                "white_box": "white-box: the photo projected into the generator",
                "black_box_calibrated": "full black-box, calibrated by the reference generator",
                "white_box_calibrated": "white-box, calibrated by the reference generator"}
P_VALUE_MEANING = (
    "What the p-value does not mean: it is not the chance that the face was used. A small one "
    "says the generator's faces match these photos more closely than they match almost everyone "
    "it never saw: training on the photos would explain that, but so would a close likeness to "
    "someone it did see. A large one does not show that the face was not used: a generator can "
    "see a face without reproducing it, and a small population cannot give a small p-value.")
SET_TEST_CAVEAT = (
    "The person-level test compares every photo of the person with every photo of the "
    "population (one-sided Welch t-test): it has more power than the rank, but it counts photos "
    "of one face as independent evidence, so its p-value can come out too small. Read the "
    "rank's p-value first; n/a where someone has fewer than two photos.")


# ---------------------------------------------------------------------------------- common

def provenance(workdir: str, config: Any, seconds: float | None,
               inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """pages.provenance of a job: `inputs` (by default those the workdir's inputs.json records,
  gmia.jobs.inputs), its config and wall time, gmia's version, the machine and the date."""
  if inputs is None:
    path = os.path.join(workdir, INPUTS_FILE)
    inputs = files.read_json(path) if os.path.exists(path) else {}
  return pages.provenance(inputs, config, seconds)


def write_page(workdir: str, build: Callable[[Mapping[str, Any], str], pages.Page],
               report: Mapping[str, Any], show_photos: bool) -> None:
  """Writes the page `build` (one of the *_page functions here) makes of `report` as
  workdir/report.html; show_photos=False (a job's report_photos) replaces every photo of a person
  by its fingerprint. Process 0 alone builds it: it writes the files the page embeds, which the
  other processes of a multi-process job may not see yet."""
  if jax.process_index() != 0:
    return
  pages.render_page(os.path.join(workdir, PAGE_FILE), build(report, workdir),
                    show_photos=bool(show_photos))


def fmt(value: float | int | bool | None) -> str:
  return pages.format_number(value)


def literal(text: str) -> str:
  """`text` inside a pages.Text: its braces are no number fields."""
  return str(text).replace("{", "{{").replace("}", "}}")


def figure(workdir: str, name: str, caption: str, shows_people: bool = False) -> list[pages.Item]:
  """The job's figure file `name`, if it wrote one."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return []
  return [pages.Figure(path, caption, shows_people=shows_people)]


def above(low: float | None, high: float | None) -> bool:
  """Whether an interval's low end lies above another's high end (no, where undefined)."""
  return low is not None and high is not None and low > high


def chance(low: float | None, high: float | None) -> str:
  """What an AUC interval says about chance (0.5)."""
  if low is None or high is None:
    return "undefined"
  if low > 0.5:
    return "better than chance"
  if high < 0.5:
    return "worse than chance"
  return "not distinguishable from chance"


def auc_words(result: Mapping[str, Any]) -> str:
  """'AUC 0.810 (95% interval 0.713 to 0.902): better than chance'."""
  low, high = result["auc_interval"]
  return (f"AUC {fmt(result['auc'])} ({result['confidence']:.0%} interval {fmt(low)} to "
          f"{fmt(high)}): {chance(low, high)}")


def resolution_words(result: Mapping[str, Any]) -> str:
  """TPR at the lowest false-positive rate the non-members resolve, and those they do not."""
  negatives, rows = result["num_negatives"], result["tpr_at_fpr"]
  resolved = [row for row in rows if row["resolved"]]
  text = ""
  if resolved:
    row = min(resolved, key=lambda r: r["fpr"])
    low, high = row["interval"]
    text += (f" At a false-positive rate of {fmt(row['fpr'])} it finds {fmt(row['tpr'])} of the "
             f"members ({fmt(low)} to {fmt(high)}).")
  unresolved = [fmt(row["fpr"]) for row in rows if not row["resolved"]]
  if unresolved:
    text += (f" {negatives} non-members cannot resolve a false-positive rate below 1/{negatives}"
             f" = {fmt(1 / negatives)}: TPR at FPR {', '.join(unresolved)} is not measured.")
  return text


def auc_number(key: str, label: str, note: str = "") -> pages.Number:
  """The AUC of the membership_report at `key`, with its interval."""
  return pages.Number(f"AUC, {label}", f"{key}.auc", f"{key}.auc_interval",
                      note or "0.5 is chance, 1 a perfect separation")


def tpr_table(key: str, result: Mapping[str, Any], label: str) -> pages.Table:
  """TPR at low FPR of the membership_report `result` at `key`, with what is resolved."""
  return pages.Table(f"{key}.tpr_at_fpr", {"FPR": "fpr", "TPR": "tpr", "interval": "interval",
                                            "resolved": "resolved"},
                     caption=f"{label}: members found (TPR) at low false-positive rates, with "
                     f"{result['confidence']:.0%} bootstrap intervals; resolved: whether "
                     f"{result['num_negatives']} non-members can measure that FPR")


