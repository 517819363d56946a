"""The report page of every job: its report dict (the one it writes as JSON) and its workdir in, a
gmia.jobs.pages.Page out, written as report.html beside the job's files (page_parts.write_page).

A job adds to its report what the page shows that the job did not already hold (`*_extras`: the
verdict in words, tables as lists of rows): every number and sentence of the page is in report.json.
Figures are the job's own PNG files, embedded; one that shows faces (matches.png, inversions.png)
is marked so, and with the job's `report_photos` off replaced by its fingerprint. The faces shown
one by one come from matches.npz, which the membership attack writes beside matches.png.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gmia import files
from gmia.attacks import power
from gmia.jobs import pages
from gmia.jobs.page_parts import (ATTACK_NAMES, GALLERY_LIMIT, MATCHES_FILE, PAGE_FILE,
                                   P_VALUE_MEANING, SET_TEST_CAVEAT, above, auc_number,
                                   auc_words, chance, figure, fmt, literal, provenance,
                                   resolution_words, tpr_table)


def _matches(workdir: str) -> dict[str, np.ndarray]:
  """matches.npz of a membership attack: the faces of matches.png one by one."""
  path = os.path.join(workdir, MATCHES_FILE)
  try:
    with np.load(path) as saved:
      return {name: saved[name] for name in saved.files}
  except OSError as error:
    raise ValueError(f"{path}: cannot read the faces of the report: {error}") from None


def _nearest_photos(report_key: str, nearest: Sequence[Mapping[str, Any]],
                    faces: Mapping[str, np.ndarray]) -> list[pages.Photo]:
  """The generated faces of `nearest` ({"sample", "similarity"} records at `report_key`)."""
  image_of = dict(zip(faces["sample"].tolist(), faces["sample_image"]))
  return [pages.Photo(image_of[entry["sample"]], "generated",
                      {"sample": f"{report_key}.{i}.sample",
                       "similarity": f"{report_key}.{i}.similarity"})
          for i, entry in enumerate(nearest)]


def _draw_again(report_key: str, count: int, generator: str) -> pages.Text:
  """The command that draws the samples at `report_key` ({"sample"} records) again."""
  indices = ",".join(f"{{{report_key}.{i}.sample}}" for i in range(count))
  return pages.Text(
      "Every generated face here can be drawn again, the same image bit for bit: python -m "
      f"attack.sample --workdir=SAMPLES --config.generator={literal(generator)} "
      "--config.seed={config.seed} --config.chunk_size={chunk_size} "
      f"--config.indices={indices}")


# ---------------------------------------------------------------------------------- attack

def membership_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """The attack's verdict in words: the AUC with its interval and the TPR at low FPR that the
  non-members resolve, or without known members, the most exposed person's p-value."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  if not report["metrics"]:
    top, population = report["ranking"][0], report["people"]["population"]
    return {"verdict": (
        f"No one here is known to be in the training data, so there is no ROC: "
        f"{len(report['ranking'])} people are ranked by their {report['primary']} score against "
        f"{population} people known not to be in it. The most exposed, {top['name']}, has "
        f"p = {fmt(top['p_value'])}; with {population} people no p-value can go below "
        f"{fmt(1 / (population + 1))}.")}
  result = report["metrics"][report["primary"]]
  return {"verdict": (
      f"The attack tells the generator's {result['num_positives']} members from "
      f"{result['num_negatives']} people it never saw with {auc_words(result)} "
      f"({report['primary']} score)." + resolution_words(result))}


def membership_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  """The attack: the verdict, the ROC and TPR at low FPR of every score variant, the people
  ranked with their p-values, where the most exposed falls among the population, the matches,
  and what the scores were computed from."""
  primary, metrics = report["primary"], report["metrics"]
  sections = []
  if metrics:
    result = metrics[primary]
    items: list[pages.Item] = [
        auc_number(f"metrics.{variant}", variant,
                    "the primary score" if variant == primary else "")
        for variant in metrics]
    items += figure(workdir, "roc.png",
                     "ROC of every score variant: linear and log false-positive rate. On the log "
                     f"panel the grey band marks the rates {result['num_negatives']} non-members "
                     "cannot resolve.")
    items.append(tpr_table(f"metrics.{primary}", result, primary))
    items += figure(workdir, power.FIGURE_FILE, "Every variant's AUC against the number of "
                    "generated samples it had seen (the first samples of this run)")
    sections.append(pages.Section("Members against people the generator never saw", items))
  ranking = [
      pages.Text("Each person's p-value is the share of the {people.population} people known "
                 "not to be in the training data who score at least as high (plus one, over "
                 "their number plus one)."),
      pages.Table("ranking", {"rank": "rank", "person": "name", "group": "group",
                              "score": "score", "p-value": "p_value",
                              "person-level p-value": "set_p_value"},
                  caption=f"Tested people by decreasing {primary} score"),
      pages.Text(SET_TEST_CAVEAT),
      pages.Number("population below 0.05 in the person-level test",
                   "set_test_population_below_5pct",
                   note="about 0.05 where the test's caveat does not bite")]
  ranking += _histogram(report["population_scores"], report["ranking"][0]["score"],
                        "population_scores", "ranking.0.score", "most exposed", primary)
  sections.append(pages.Section("People, most exposed first", ranking))
  top = report["ranking"][0]
  matches = figure(workdir, "matches.png", "The most exposed people (their best photo as the "
                    "matcher saw it) beside the generated samples nearest to them, with the "
                    "sample's index and similarity.", shows_people=True)
  if top.get("nearest"):
    matches.append(_draw_again("ranking.0.nearest", len(top["nearest"]), report["generator"]))
  sections.append(pages.Section("The nearest generated faces", matches))
  sections.append(pages.Section("Samples, photos and settings", [
      pages.Number("samples drawn", "num_samples"),
      pages.Number("samples with a usable face", "usable_samples"),
      pages.Number("photos used", "photos.used"),
      pages.Number("photos skipped", "photos.skipped", note="skipped.csv says why"),
      *[pages.Number(f"people: {group}", f"people.{group}") for group in report["people"]],
      pages.Number("verification threshold", "verification_threshold",
                   note="the matcher's cosine at the set false-accept rate (count score)"),
      pages.Number("density bandwidth, samples", "density_bandwidth.samples",
                   note="von Mises-Fisher concentration of the samples' density"),
      pages.Number("density bandwidth, population", "density_bandwidth.population",
                   note="the same for the population's photos"),
      pages.Text(f"Generator: {literal(report['generator'])}. Per-person scores: scores.csv; "
                 "each sample's nearest people: samples.csv.")]))
  title = report["config"].get("title") or f"Identity membership: {report['generator']}"
  return pages.Page(title, report, ["verdict"], sections)


def _histogram(values: Sequence[float | None], mark: float | None, values_key: str,
               mark_key: str, label: str, variant: str) -> list[pages.Item]:
  """Where `mark` falls among `values`, when both are defined."""
  if mark is None or all(v is None for v in values):
    return []
  return [pages.Histogram(values_key, mark_key, label, f"{variant} score",
                          caption=f"The {variant} scores of the {len(values)} people known not "
                          "to be in the training data.")]


# ---------------------------------------------------------------------------------- audit

def audit_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  """The audit of one person: the verdict, their photos, the generated faces nearest to them
  (drawable again), where their score falls in the population, and what the p-values mean."""
  faces = _matches(workdir)
  own = faces["photo_person"] == report["person"]
  photos = [pages.Photo(label if os.path.isfile(label) else crop, os.path.basename(label))
            for label, crop in zip(faces["photo_label"][own].tolist(), faces["photo_crop"][own])]
  sections = [
      pages.Section("Your photos", [pages.Gallery(
          photos, f"The photos of {report['person']} as given (or as the matcher saw them)")]),
      pages.Section("The generated faces nearest to you", [
          pages.Gallery(_nearest_photos("nearest", report["nearest"], faces),
                        "Generated samples nearest to your photos: cosine similarity of the face "
                        "matcher (1 is the same face) and the sample's index"),
          _draw_again("nearest", len(report["nearest"]), report["config"]["generator"])]),
      pages.Section("Where your score falls", [
          pages.Number("your score", "score", note=f"{report['variant']}: the generator's "
                       "closest match to your photos"),
          pages.Number("people in the population", "population_size",
                       note="known not to be in the training data"),
          *_histogram(report["population_scores"], report["score"], "population_scores", "score",
                      "you", report["variant"])]),
      pages.Section("The p-values", [
          pages.Number("p-value", "p_value", note="the share of the population (plus one) "
                       "scoring at least as high as you"),
          pages.Number("smallest p-value possible", "min_p_value",
                       note="1 / (people in the population + 1)"),
          pages.Number("person-level p-value", "set_p_value",
                       note="your photos against the population's; see its caveat"),
          pages.Text("p = {p_value} is the chance that someone the generator never saw matches "
                     "its samples at least as closely as you do. With {population_size} people "
                     "in the population no result can go below p = {min_p_value}."),
          pages.Text(P_VALUE_MEANING), pages.Text(SET_TEST_CAVEAT)]),
      pages.Section("Samples", [
          pages.Number("samples drawn", "num_samples"),
          pages.Number("samples with a usable face", "usable_samples"),
          pages.Number("photos used", "photos.used"),
          pages.Number("photos skipped", "photos.skipped"),
          pages.Text(f"Generator: {literal(report['config']['generator'])}. The attack's files "
                     "(report.json, scores.csv, matches.png) are beside this page.")])]
  return pages.Page(f"Audit of {report['person']}", report, ["verdict"], sections)


# ---------------------------------------------------------------------------------- filter

def release_filter_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """The filter's verdict, and the people samples were dropped for as rows."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  without = report["samples_without_face"]
  verdict = (f"{report['dropped']} of {report['num_samples']} generated samples came closer "
             f"than similarity {fmt(report['threshold'])} to a photo of someone the generator "
             f"was trained on and are held back; {report['kept']} are kept (kept.npz)."
             + (f" {without} showed no usable face and are left out." if without else ""))
  rows = sorted(report["dropped_per_identity"].items(), key=lambda item: (-item[1], item[0]))
  return {"verdict": verdict,
          "dropped_people": [{"person": person, "dropped": count} for person, count in rows]}


def release_filter_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  items: list[pages.Item] = [
      pages.Number("samples", "num_samples"), pages.Number("kept", "kept"),
      pages.Number("held back", "dropped"),
      pages.Number("without a usable face", "samples_without_face"),
      pages.Number("threshold", "threshold", note="cosine similarity to a training photo")]
  items += figure(workdir, "dropped.png", "The samples held back that came closest (left) "
                   "beside the training photo they match, with its person and similarity.",
                   shows_people=True)
  if report["dropped_people"]:
    items.append(pages.Table("dropped_people", {"person": "person", "samples held back":
                                                "dropped"}, caption="Whom they resembled"))
  return pages.Page(f"Release filter: {report['config']['generator']}", report, ["verdict"],
                    [pages.Section("Samples kept and held back", items)])


# ---------------------------------------------------------------------------------- calibration

def calibration_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """The calibration's verdict (the best variant on the target; which variants stay at chance
  on the generators that saw no member) and its variant x generator table as rows."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  metrics = report["metrics"]
  generators = list(metrics)
  variants = list(metrics[generators[0]])
  rows = [{"variant": variant, **{g: metrics[g][variant]["auc"] for g in generators},
           **{f"{g}_interval": metrics[g][variant]["auc_interval"] for g in generators}}
          for variant in variants]
  target = metrics["target"]
  best = max(variants, key=lambda v: -np.inf if target[v]["auc"] is None else target[v]["auc"])
  nulls = [g for g in generators if g != "target"]
  off = [f"{v} on {g} ({fmt(metrics[g][v]['auc'])})" for v in variants for g in nulls
         if chance(*metrics[g][v]["auc_interval"]) != "not distinguishable from chance"]
  text = (f"On the target generator the best variant is {best}: {auc_words(target[best])}. On "
          f"the generators that saw no member ({', '.join(nulls)}), "
          f"{len(variants) * len(nulls) - len(off)} of {len(variants) * len(nulls)} variant AUCs "
          "have an interval holding 0.5, as a calibrated score's must"
          + (f"; off: {', '.join(off)}." if off else "."))
  return {"verdict": text, "table": rows}


def calibration_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  generators = list(report["metrics"])
  columns = {"variant": "variant"}
  for generator in generators:
    columns[generator] = generator
    columns[f"{generator} interval"] = f"{generator}_interval"
  # The target's and the control's attacks are the main job's; the others this job's own.
  main = report["config"]["main_workdir"]
  attacks = {generator: os.path.join(workdir, f"attack_{generator}") for generator in generators}
  attacks.update(target=os.path.join(main, "attack"),
                 control=os.path.join(main, "attack_control"))
  links = [pages.Link(f"the attack on the {generator} generator",
                      os.path.relpath(os.path.join(attacks[generator], PAGE_FILE), workdir))
           for generator in generators]
  first = report["metrics"]["target"][report["table"][0]["variant"]]
  return pages.Page("Score variants and their calibration", report, ["verdict"], [
      pages.Section("AUC of every variant on every generator", [
          pages.Table("table", columns, caption=f"AUC and {first['confidence']:.0%} bootstrap "
                      f"interval; {first['num_positives']} members against "
                      f"{first['num_negatives']} non-members"),
          pages.Text("target: trained on the members; control: on other people; untrained: "
                     "noise that saw no one; reference_b: on other people again. -ref: minus "
                     "the score against the control (for the control: against reference_b); "
                     "-pop: standardised by the similarity to other people's photos; -lira: the "
                     "likelihood ratio under shadow generators ({num_shadows} shadows).")]),
      pages.Section("The attacks", links)])


# ---------------------------------------------------------------------------------- inversion

INVERSION_COLUMNS = ("psnr", "ssim", "identity_cosine", "identified", "identified_gallery",
                     "self_cosine", "self_identified", "seconds")


def feature_inversion_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """The judge's verdict per layer (its best method) in words, and the layer x method table as
  rows (a method without a decoder of a layer: undefined numbers)."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  victims, rows, found = report["num_victims"], [], []
  for layer, by_method in report["results"].items():
    best = None
    for method, result in by_method.items():
      if "missing" in result:
        rows.append({"layer": layer, "method": method, "priors": result["missing"],
                     "judge": "no reconstruction", **dict.fromkeys(INVERSION_COLUMNS)})
        continue
      named = round(result["identified"] * victims)
      rows.append({"layer": layer, "method": method, "priors": result["priors"],
                   "judge": f"right person for {named} of {victims}",
                   **{name: result[name] for name in INVERSION_COLUMNS}})
      if best is None or named > best[0]:
        best = (named, method)
    found.append(f"{layer}, {best[0]} of {victims} ({best[1]})" if best else
                 f"{layer}, no reconstruction")
  verdict = (f"An independent face matcher ({report['judge']}) names the right person among "
             f"the {victims} victims (chance: 1 in {victims}) from the reconstructions of the "
             f"features at: {'; '.join(found)}.")
  return {"verdict": verdict, "table": rows}


def feature_inversion_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  columns = {"layer": "layer", "method": "method", "judge's verdict": "judge",
             "PSNR (dB)": "psnr", "SSIM": "ssim", "judge cosine": "identity_cosine",
             "judge rank-1": "identified", "gallery rank-1": "identified_gallery",
             "self cosine": "self_cosine", "self rank-1": "self_identified",
             "seconds": "seconds", "priors": "priors"}
  return pages.Page("Feature inversion of a split network", report, ["verdict"], [
      pages.Section("Every layer and method", [
          pages.Table("table", columns, caption="Means over the victims. judge: an independent "
                      "matcher; gallery: rank 1 against the victims and "
                      f"{report['gallery_size']} distractors; self: the inverted network "
                      "itself, which a reconstruction can fool alone"),
          *figure(workdir, "inversions.png", "A victim per row: the original, then the "
                   "reconstruction of every layer and method.", shows_people=True)]),
      pages.Section("Victims", [
          pages.Number("victims", "num_victims"), pages.Number("distractors", "gallery_size"),
          pages.Text(f"Judge: {literal(report['judge'])}; inverted network: "
                     f"{literal(report['self'])}. {len(report['skipped'])} photos skipped.")])])


# ---------------------------------------------------------------------------------- reconstruction

def reconstruction_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict of each reconstruction attack: its AUC and what its interval says."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  parts = [f"{ATTACK_NAMES.get(name, name)}, {auc_words(result)}"
           for name, result in report["attacks"].items()]
  first = next(iter(report["attacks"].values()))
  return {"verdict": (f"Photos of members against photos of non-members "
                      f"({first['num_positives']} each way): " + "; ".join(parts) + ".")}


def reconstruction_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  items: list[pages.Item] = []
  for name, result in report["attacks"].items():
    items += [auc_number(f"attacks.{name}", name, ATTACK_NAMES.get(name, "")),
              tpr_table(f"attacks.{name}", result, name)]
  items += figure(workdir, "roc.png", "ROC of every attack, linear and log false-positive rate.")
  return pages.Page("Reconstruction attacks (GAN-Leaks)", report, ["verdict"], [
      pages.Section("Members against non-members", items),
      pages.Section("Reconstructions", figure(
          workdir, "reconstructions.png", "The photos the white-box attack finds most member-"
          "like: the photo, its projection into the generator and their difference (black: "
          "exact).", shows_people=True))])


# ---------------------------------------------------------------------------------- embed_photos

def embed_photos_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """What the matcher saw of the photos, and whether it keeps people apart."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  text = (f"{report['used']} of {report['photos']} photos show a usable face to "
          f"{report['matcher']} ({report['align']} alignment); {report['skipped']} skipped "
          "(skipped.csv says why).")
  if "separated" in report:
    same, other = report["same_person_min"], report["different_person_max"]
    if same is None:
      text += " No person has two photos: nothing to compare."
    elif report["separated"]:
      text += (f" Every same-person pair is more alike than every different-person pair "
               f"(lowest same-person similarity {fmt(same)}, highest other {fmt(other)}).")
    else:
      text += (f" Some different-person pair is more alike than some same-person pair "
               f"(lowest same-person similarity {fmt(same)}, highest other {fmt(other)}).")
  return {"verdict": text}


def embed_photos_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  items: list[pages.Item] = [pages.Number("photos", "photos"), pages.Number("used", "used"),
                             pages.Number("skipped", "skipped"),
                             pages.Number("embedding size", "embedding_size")]
  if "separated" in report:
    items += [pages.Number(f"{kind} similarity, {end}", f"{kind.replace('-', '_')}_{end}")
              for kind in ("same-person", "different-person") for end in ("min", "max")]
  items += figure(workdir, "faces.png", "The aligned faces the matcher saw.", shows_people=True)
  items += figure(workdir, "similarity.png", "Cosine similarity of every pair of photos, "
                   "grouped by person: same-person blocks on the diagonal.")
  return pages.Page(f"Photos embedded by {report['matcher']}", report, ["verdict"],
                    [pages.Section("What the matcher saw", items)])


# ---------------------------------------------------------------------------------- sample

def sample_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  count = len(report["indices"])
  return {"verdict": (f"{count} samples of {report['spec']} drawn with seed {report['seed']} in "
                      f"chunks of {report['chunk_size']}: sample i is the same image in every "
                      "gmia command that draws it with these settings.")}


def sample_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  with np.load(os.path.join(workdir, "samples.npz")) as saved:
    images = saved["images"][:GALLERY_LIMIT]
  shown = pages.Gallery([pages.Photo(image, "sample", {"index": f"indices.{i}"})
                         for i, image in enumerate(images)],
                        f"The first {len(images)} of {len(report['indices'])} samples "
                        "(samples.png and samples.npz hold them all)")
  return pages.Page(f"Samples of {report['spec']}", report, ["verdict"], [
      pages.Section("The samples", [
          shown, pages.Number("resolution", "resolution", note="pixels"),
          pages.Text(f"Drawn by: python -m attack.sample --config.generator="
                     f"{literal(report['spec'])} --config.seed={{seed}} "
                     "--config.chunk_size={chunk_size}")])])


# ---------------------------------------------------------------------------------- main job

def main_job_report(workdir: str, config: Any, attacks: Mapping[str, Mapping[str, Any]],
                    seconds: float, inputs: Mapping[str, Any]) -> dict[str, Any]:
  """The main job's report: each attack's title, primary variant and metrics, the verdict
  (the target's AUC against the control's) and the provenance."""
  entries = {name: {"title": summary["config"]["title"], "primary": summary["primary"],
                    "metrics": summary["metrics"][summary["primary"]]}
             for name, summary in attacks.items()}
  target, control = (entries[name]["metrics"] for name in ("attack", "attack_control"))
  text = (f"The attack on the target generator, trained on the members, reaches "
          f"{auc_words(target)}; on the control generator, trained on other people, "
          f"{auc_words(control)}.")
  if above(target["auc_interval"][0], control["auc_interval"][1]):
    text += " The target's interval lies above the control's: the generator leaks its members."
  else:
    text += (" The two intervals overlap: at this size the attack does not tell the generator "
             "that saw the members from the one that did not.")
  return {"verdict": text, "attacks": entries,
          "provenance": provenance(workdir, config, seconds, inputs)}


def main_job_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  sections = []
  for name, entry in report["attacks"].items():
    key = f"attacks.{name}.metrics"
    items: list[pages.Item] = [auc_number(key, entry["primary"]),
                               tpr_table(key, entry["metrics"], entry["primary"])]
    items.append(pages.Link("The whole attack: ROC, every variant, the people ranked, the "
                            "matches", f"{name}/{PAGE_FILE}"))
    sections.append(pages.Section(entry["title"], items))
  sections.append(pages.Section("The data", figure(
      workdir, "data_overview.png", "Member identities in rows: their training photos, then "
      "their reference photos (the attack's only view of them).", shows_people=True)))
  return pages.Page("The main job: does the generator leak who it was trained on?", report,
                    ["verdict"], sections)
