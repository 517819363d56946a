"""Report pages: a job's report as one self-contained HTML file (report.html) that a person reads.

A page shows the verdict first, in words, then sections of evidence (key numbers with their
intervals, prose, sortable tables, figures, photo galleries, a histogram marking where one value
falls in a population, links to other pages), then the provenance: what the result was computed
from, by which gmia on which machine.

One source of truth: every number on the page is read from the report dict that the job writes
as report.json, by its path there ("roc.auc", "ranking.0.p_value"), and written by the one
formatter `format_number`. Each is a `<data value="EXACT" data-key="PATH">` element, so a test
(or a reader's script) can check the page against report.json. The job supplies only words,
paths and figures; a page cannot show a number that report.json does not hold.

The file works offline and forwarded alone: the stylesheet and the table-sorting script are
inline, figures and photos are data URIs, and a Content-Security-Policy forbids fetching
anything. With `show_photos=False` every photo of a person (and every figure marked as showing
people) is replaced by its fingerprint, for pages that will be shared.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import importlib.resources
import io
import json
import math
import os
import platform
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any, Union

import jax
import jinja2
import matplotlib
import matplotlib.figure
import numpy as np
from markupsafe import Markup
from PIL import Image

import gmia
from gmia import files, viz
from gmia.data import photos as photo_files
from gmia.fingerprint import tree_digest
from gmia.sources.base import file_digest

PAGE_FILE = "report.html"
# Photos are shrunk to this many pixels on their longer side: enough to recognise a face on a
# phone or on paper, and a gallery of 20 stays a few hundred kB.
THUMBNAIL = 256
# Thumbnails up to this many pixels (generated faces) are exact PNG, scaled up by the browser
# pixel for pixel; larger ones are JPEG.
EXACT_PIXELS = 128 * 128
FIGURE_DPI = 150
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".svg": "image/svg+xml", ".gif": "image/gif", ".webp": "image/webp"}


# ---------------------------------------------------------------------------------- contents

@dataclasses.dataclass(frozen=True)
class Number:
  """A key number: `key` is its path in the report; `interval` the path of its [low, high]
  (e.g. a bootstrap interval); `note` says in words what the number means."""
  label: str
  key: str
  interval: str | None = None
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Text:
  """A paragraph; `{path}` fields are replaced by the report's numbers there ("the smallest
  p-value this population can give is {min_p_value}"). `{{` and `}}` are literal braces."""
  text: str


@dataclasses.dataclass(frozen=True)
class Table:
  """The records (dicts) at path `rows` in the report, one row each; `columns` maps each
  heading to a field (a path within a record). Sortable by clicking a heading."""
  rows: str
  columns: Mapping[str, str]
  caption: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
  """A figure: a matplotlib Figure (embedded as `format`, svg or png; made with
  matplotlib.figure.Figure, not pyplot, it leaves no open figure behind), an image file (png,
  jpg, svg, gif, webp) or u8[H, W, 3] pixels. `shows_people`: it holds photos of people (a grid
  of matches), so `show_photos=False` leaves it out."""
  image: matplotlib.figure.Figure | str | np.ndarray
  caption: str
  alt: str = ""
  shows_people: bool = False
  format: str = "svg"


@dataclasses.dataclass(frozen=True)
class Photo:
  """One face: a photo file, or u8[H, W, 3] (or f32 in [-1, 1]) pixels. `numbers` maps a label
  to a path in the report ({"similarity": "nearest.0.similarity", "sample": "nearest.0.index"}).
  `person`: a photo of a real person, or a face that may show one (a generator's sample nearest
  to a person); only faces known to be of no one (a toy generator's) should say False."""
  image: str | np.ndarray
  caption: str = ""
  numbers: Mapping[str, str] = dataclasses.field(default_factory=dict)
  person: bool = True


@dataclasses.dataclass(frozen=True)
class Gallery:
  photos: Sequence[Photo]
  caption: str = ""


@dataclasses.dataclass(frozen=True)
class Histogram:
  """Where one value falls in a population: the numbers at path `values` in the report as a
  histogram, with the number at path `mark` drawn as a line labelled `mark_label`."""
  values: str
  mark: str
  mark_label: str
  xlabel: str
  caption: str = ""
  bins: int = 20


@dataclasses.dataclass(frozen=True)
class Link:
  """A link to another file of the job (a page per sweep point): `href` relative to the page."""
  text: str
  href: str


Item = Union[Number, Text, Table, Figure, Gallery, Histogram, Link]


@dataclasses.dataclass(frozen=True)
class Section:
  title: str
  items: Sequence[Item]


@dataclasses.dataclass(frozen=True)
class Page:
  """A report page. `report` is the dict the job writes as report.json; `verdict` the paths of
  its sentences in words, shown first; `provenance` the path of the record `provenance()` made."""
  title: str
  report: Mapping[str, Any]
  verdict: Sequence[str]
  sections: Sequence[Section]
  provenance: str = "provenance"


# ---------------------------------------------------------------------------------- numbers

def format_number(value: float | int | bool | None) -> str:
  """The one way gmia writes a number for a person: integers exactly (sample indices can be
  drawn again), floats to 3 significant digits (trailing zeros kept: 0.810, 12.0), tiny or huge
  ones in exponent form, yes/no, and "n/a" for an undefined number (JSON null)."""
  if value is None:
    return "n/a"
  if isinstance(value, (bool, np.bool_)):
    return "yes" if value else "no"
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if not isinstance(value, (float, np.floating)):
    raise TypeError(f"format_number takes a number, not {type(value).__name__}: {value!r}")
  value = float(value)
  if not math.isfinite(value):
    return "n/a"  # As in report.json, where write_json makes it null.
  magnitude = abs(value)
  if magnitude == 0:
    return "0"
  if magnitude < 1e-3 or magnitude >= 1e6:
    return f"{value:.2e}"
  if magnitude >= 1000:
    return f"{value:.0f}"
  return f"{value:#.3g}".rstrip(".")


def lookup(report: Mapping[str, Any], key: str) -> Any:
  """The value at dotted path `key` in `report` (integers index lists: "ranking.0.score")."""
  node: Any = report
  for depth, part in enumerate(key.split(".")):
    try:
      node = node[int(part)] if isinstance(node, list) else node[part]
    except (KeyError, IndexError, ValueError, TypeError):
      where = ".".join(key.split(".")[:depth + 1])
      raise ValueError(f"the report has no {where!r} (page field {key!r})") from None
  return node


# ---------------------------------------------------------------------------------- provenance

def provenance(inputs: Mapping[str, Any], config: Any, seconds: float | None) -> dict[str, Any]:
  """What a result was computed from, for the job to store in its report (under "provenance")
  so that report.json and the page both say it: the inputs' fingerprints (inputs.json), the
  config (a ConfigDict or a dict), the wall time, gmia's version, the machine and the date."""
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return files.strict_json({
      "gmia_version": gmia.__version__, "inputs": dict(inputs), "config": config,
      "seconds": seconds, "machine": machine(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def machine() -> dict[str, Any]:
  """The platform, CPU and accelerators this process runs on."""
  devices = jax.devices()
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "jax": jax.__version__,
          "devices": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
          "processes": jax.process_count()}


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as handle:
      for line in handle:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------- rendering

def render_page(path: str, page: Page, *, show_photos: bool = True) -> None:
  """Writes `page` as one self-contained HTML file at `path`, atomically (a killed job leaves
  the previous page or none, never half of one)."""
  files.write_atomic(path, render_html(page, show_photos=show_photos))


def render_html(page: Page, *, show_photos: bool = True) -> str:
  """The page's HTML. ValueError names a path the report lacks or a file that cannot be read."""
  # The report as report.json holds it (numpy -> Python, NaN -> null, keys as strings): the
  # page shows exactly what a reader of that file finds.
  report = json.loads(json.dumps(files.strict_json(page.report), allow_nan=False))
  view = _View(report, show_photos)
  verdict = [lookup(view.report, key) for key in page.verdict]
  for key, sentence in zip(page.verdict, verdict):
    if not isinstance(sentence, str):
      raise ValueError(f"verdict {key!r} is not a sentence: {sentence!r}")
  sections = [{"title": section.title, "blocks": view.blocks(section.items)}
              for section in page.sections]
  style, script = _asset("page.css"), _asset("sort.js")
  policy = ("default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'; "
            f"style-src '{_csp_hash(style)}'; script-src '{_csp_hash(script)}'")
  return _environment().get_template("page.html.j2").render(
      title=page.title, verdict=list(zip(page.verdict, verdict)), sections=sections,
      provenance=view.provenance(page.provenance), show_photos=show_photos,
      style=Markup(style), script=Markup(script), policy=policy)


class _View:
  """Turns a page's items into the plain values the template shows."""

  def __init__(self, report: Mapping[str, Any], show_photos: bool):
    self.report = report
    self.show_photos = show_photos

  def number(self, key: str) -> dict[str, Any]:
    value = lookup(self.report, key)
    if isinstance(value, (Mapping, list, str)):
      raise ValueError(f"the report's {key!r} is not a number: {value!r}")
    return {"key": key, "exact": json.dumps(value), "text": format_number(value)}

  def blocks(self, items: Sequence[Item]) -> list[dict[str, Any]]:
    """One block per item, consecutive Numbers grouped into one grid."""
    blocks: list[dict[str, Any]] = []
    for item in items:
      if isinstance(item, Number):
        if not blocks or blocks[-1]["kind"] != "numbers":
          blocks.append({"kind": "numbers", "numbers": []})
        blocks[-1]["numbers"].append(self.key_number(item))
        continue
      convert = {Text: self.text, Table: self.table, Figure: self.figure, Gallery: self.gallery,
                 Histogram: self.histogram, Link: self.link}.get(type(item))
      if convert is None:
        raise ValueError(f"a page section holds {type(item).__name__}, which is no page item")
      blocks.append({"kind": type(item).__name__.lower(), **convert(item)})
    return blocks

  def key_number(self, item: Number) -> dict[str, Any]:
    interval = None
    if item.interval is not None:
      bounds = lookup(self.report, item.interval)
      if not isinstance(bounds, list) or len(bounds) != 2:
        raise ValueError(f"the report's {item.interval!r} is no [low, high] pair: {bounds!r}")
      interval = [self.number(f"{item.interval}.{i}") for i in range(2)]
    return {"label": item.label, "value": self.number(item.key), "interval": interval,
            "note": item.note}

  def text(self, item: Text) -> dict[str, Any]:
    parts = []
    for literal, field, spec, conversion in string.Formatter().parse(item.text):
      parts.append({"text": literal, "number": None})
      if field is not None:
        if spec or conversion or not field:
          raise ValueError(f"page text {item.text!r}: write a number as {{path}}, formatted by "
                           "format_number (no format spec or conversion)")
        parts.append({"text": "", "number": self.number(field)})
    return {"parts": parts}

  def table(self, item: Table) -> dict[str, Any]:
    records = lookup(self.report, item.rows)
    if not isinstance(records, list):
      raise ValueError(f"the report's {item.rows!r} is not a list of rows")
    rows = []
    for i, record in enumerate(records):
      row = []
      for field in item.columns.values():
        key = f"{item.rows}.{i}.{field}"
        value = lookup(self.report, key)
        if isinstance(value, (Mapping, list, str)):
          text = _plain_text(value)
          row.append({"text": text, "number": None, "sort": text})
        else:
          # Sorted by the exact value (booleans as 0 and 1); an undefined number goes last.
          sort = "" if value is None else json.dumps(float(value))
          row.append({"number": self.number(key), "sort": sort})
      rows.append(row)
    columns = [{"label": label, "numeric": bool(rows) and all(row[j]["number"] for row in rows)}
               for j, label in enumerate(item.columns)]
    return {"columns": columns, "rows": rows, "caption": item.caption}

  def figure(self, item: Figure) -> dict[str, Any]:
    data, mime = _figure_bytes(item.image, item.format)
    hidden = item.shows_people and not self.show_photos
    return {"uri": None if hidden else _data_uri(data, mime), "caption": item.caption,
            "alt": item.alt or item.caption,
            "fingerprint": _sha256(data) if hidden else None}

  def gallery(self, item: Gallery) -> dict[str, Any]:
    photos = []
    for photo in item.photos:
      numbers = [{"label": label, "number": self.number(key)}
                 for label, key in photo.numbers.items()]
      if photo.person and not self.show_photos:
        photos.append({"uri": None, "fingerprint": _photo_fingerprint(photo.image),
                       "caption": photo.caption, "numbers": numbers})
        continue
      uri, exact = _thumbnail(photo.image)
      photos.append({"uri": uri, "exact": exact, "caption": photo.caption, "numbers": numbers,
                     "alt": photo.caption or "face"})
    return {"photos": photos, "caption": item.caption}

  def histogram(self, item: Histogram) -> dict[str, Any]:
    values = lookup(self.report, item.values)
    if not isinstance(values, list):
      raise ValueError(f"the report's {item.values!r} is not a list of numbers")
    finite = np.array([v for v in values if v is not None], float)
    mark = self.number(item.mark)
    marked = json.loads(mark["exact"])
    if not len(finite) or marked is None:
      raise ValueError(f"histogram of {item.values!r} marking {item.mark!r}: the report holds "
                       f"{len(finite)} defined values and a mark of {mark['text']}")
    # The bins span the mark too, so a mark beyond the whole population stays in view.
    span = (min(finite.min(), marked), max(finite.max(), marked))
    figure = matplotlib.figure.Figure(figsize=(6, 3))
    axes = figure.add_subplot()
    axes.hist(finite, bins=item.bins, range=span, color="#9db4d3", edgecolor="white")
    axes.axvline(marked, color="#c0392b", linewidth=2, label=f"{item.mark_label}: {mark['text']}")
    axes.set_xlabel(item.xlabel)
    axes.set_ylabel("count")
    axes.legend(loc="upper left", frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    data, mime = _figure_bytes(figure, "svg")
    return {"uri": _data_uri(data, mime), "caption": item.caption, "mark": mark,
            "mark_label": item.mark_label, "count": len(finite),
            "alt": f"histogram of {item.xlabel} with {item.mark_label} marked"}

  def link(self, item: Link) -> dict[str, Any]:
    if re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|/)", item.href):
      raise ValueError(f"page link {item.href!r} must be relative to the page (it travels with "
                       "it), not a URL or an absolute path")
    return {"text": item.text, "href": item.href}

  def provenance(self, key: str) -> dict[str, Any]:
    record = lookup(self.report, key)
    missing = {"gmia_version", "inputs", "config", "seconds", "machine", "date"} - set(record)
    if missing:
      raise ValueError(f"the report's {key!r} lacks {sorted(missing)}: make it with "
                       "gmia.jobs.pages.provenance")
    seconds = (self.number(f"{key}.seconds") if record["seconds"] is not None else None)
    return {"version": record["gmia_version"], "date": record["date"], "seconds": seconds,
            "machine": _flatten(record["machine"]), "inputs": _flatten(record["inputs"]),
            "config": _flatten(record["config"])}


def _plain_text(value: Any) -> str:
  if value is None or isinstance(value, (bool, int, float)):
    return format_number(value)
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    return "[" + ", ".join(_plain_text(v) for v in value) + "]"
  return json.dumps(value, sort_keys=True)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
  """(dotted key, exact JSON text) of every leaf: settings and fingerprints are shown exactly."""
  rows = []
  for key, value in sorted(record.items()):
    if isinstance(value, Mapping) and value:
      rows.extend(_flatten(value, f"{prefix}{key}."))
    else:
      rows.append((f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value)))
  return rows


# ---------------------------------------------------------------------------------- images

def _figure_bytes(image: matplotlib.figure.Figure | str | np.ndarray,
                  image_format: str) -> tuple[bytes, str]:
  if isinstance(image, matplotlib.figure.Figure):
    if image_format not in ("svg", "png"):
      raise ValueError(f"figure format {image_format!r}: use svg or png")
    buffer = io.BytesIO()
    # No date or software version in the file: the same figure gives the same bytes.
    metadata = {"Date": None} if image_format == "svg" else {"Software": None}
    # A fixed salt for the SVG's element ids, which are random otherwise.
    with matplotlib.rc_context({"svg.hashsalt": "gmia"}):
      image.savefig(buffer, format=image_format, dpi=FIGURE_DPI, bbox_inches="tight",
                    metadata=metadata)
    return buffer.getvalue(), _MIME[f".{image_format}"]
  if isinstance(image, str):
    mime = _MIME.get(os.path.splitext(image)[1].lower())
    if mime is None:
      raise ValueError(f"figure {image}: not an image file the page can embed "
                       f"({', '.join(sorted(_MIME))})")
    try:
      with open(image, "rb") as handle:
        return handle.read(), mime
    except OSError as error:
      raise ValueError(f"figure {image}: cannot read: {error.strerror}") from None
  return _png(viz.to_uint8(image)), "image/png"


def _thumbnail(image: str | np.ndarray) -> tuple[str, bool]:
  """(data URI, whether it is exact pixels) of a photo no larger than THUMBNAIL."""
  pixels = photo_files.decode(image) if isinstance(image, str) else viz.to_uint8(image)
  if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
    raise ValueError(f"a photo must be u8[H, W, 3], got shape {pixels.shape}")
  picture = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
  picture.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
  if picture.width * picture.height <= EXACT_PIXELS:
    return _data_uri(_png(np.asarray(picture)), "image/png"), True
  buffer = io.BytesIO()
  picture.convert("RGB").save(buffer, format="JPEG", quality=90)
  return _data_uri(buffer.getvalue(), "image/jpeg"), False


def _photo_fingerprint(image: str | np.ndarray) -> str:
  """A photo file's sha256 (16 hex digits, as `sha256sum` begins), or its pixels' digest."""
  return file_digest(image) if isinstance(image, str) else tree_digest(viz.to_uint8(image))


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
  return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------------------------- templates

def _asset(name: str) -> str:
  return (importlib.resources.files("gmia.jobs") / "templates" / name).read_text()


def _csp_hash(text: str) -> str:
  return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@functools.cache
def _environment() -> jinja2.Environment:
  return jinja2.Environment(loader=jinja2.PackageLoader("gmia.jobs", "templates"),
                            autoescape=True, undefined=jinja2.StrictUndefined,
                            trim_blocks=True, lstrip_blocks=True)
