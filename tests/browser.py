"""A real browser for the report pages: Debian's headless Chromium, driven over the Chrome
DevTools protocol, says what a person opening report.html would meet.

`Chromium.open(path, width)` loads a page at a window width (375 px is a phone, with the
mobile viewport; 1280 px a desktop) and returns a `Tab` that tells the requests the page made,
its console errors, its broken images, whether it scrolls sideways, a screenshot, and the page's
verdict and numbers read from the DOM. `check_report_page` runs all of it at both widths and
compares the page with the report.json it was made from.

Every host name resolves to nothing (--host-resolver-rules), so a page reaching for the network
fails and says so instead of fetching. One browser serves a whole test module (the `chromium`
fixture): it starts in about a second, a page opens in a fraction of one.

Without Chromium the browser tests are skipped, saying why, except in CI (the environment
variable CI set, not to 0 or false), where a missing browser fails them: .ci/run installs it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image
from websockets.sync.client import connect

from gmia.jobs import pages

CHROMIUM = "/usr/bin/chromium"
PHONE, DESKTOP = 375, 1280
TIMEOUT = 30.0
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-port=0"]
# A screenshot with fewer distinct colours than this is blank (or a lone error message).
MIN_COLOURS = 16


def in_ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false")


class Chromium:
  """One headless Chromium process and its DevTools connection."""

  def __init__(self, executable: str = CHROMIUM):
    self.profile = tempfile.mkdtemp(prefix="gmia-chromium-")
    self.log = open(os.path.join(self.profile, "stderr.log"), "wb")
    self.process = subprocess.Popen(
        [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
    self.events: list[dict[str, Any]] = []
    self.calls = 0
    self.connection = contextlib.ExitStack()
    try:
      port, path = self._endpoint()
      self.socket = self.connection.enter_context(connect(
          f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=TIMEOUT))
    except BaseException:
      self._stop()
      raise

  def _endpoint(self) -> tuple[str, str]:
    """Chromium writes its DevTools port and path to DevToolsActivePort once it listens."""
    marker = os.path.join(self.profile, "DevToolsActivePort")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"chromium exited with {self.process.returncode}: {self._stderr()}")
      if os.path.exists(marker):
        lines = pathlib.Path(marker).read_text().split()
        if len(lines) == 2:
          return lines[0], lines[1]
      time.sleep(0.05)
    raise RuntimeError(f"chromium opened no DevTools port in {TIMEOUT:.0f} s: {self._stderr()}")

  def _stderr(self) -> str:
    self.log.flush()
    return pathlib.Path(self.log.name).read_text(errors="replace")[-2000:]

  def call(self, method: str, params: Mapping[str, Any] | None = None,
           session: str | None = None) -> dict[str, Any]:
    """Sends one DevTools command and returns its result; events read meanwhile are kept."""
    self.calls += 1
    message: dict[str, Any] = {"id": self.calls, "method": method, "params": dict(params or {})}
    if session:
      message["sessionId"] = session
    self.socket.send(json.dumps(message))
    while True:
      reply = json.loads(self.socket.recv(timeout=TIMEOUT))
      if reply.get("id") == self.calls:
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]
      self.events.append(reply)

  def wait_for(self, method: str, session: str) -> dict[str, Any]:
    """The first event `method` of `session`, reading on until it comes."""
    deadline = time.monotonic() + TIMEOUT
    while True:
      for event in self.events:
        if event.get("method") == method and event.get("sessionId") == session:
          return event["params"]
      left = deadline - time.monotonic()
      if left <= 0:
        raise TimeoutError(f"no {method} in {TIMEOUT:.0f} s")
      self.events.append(json.loads(self.socket.recv(timeout=left)))

  def open(self, path: str, width: int, height: int = 800) -> Tab:
    """Loads the file at `path` in a new tab `width` px wide (a phone's viewport below 600)."""
    target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = self.call("Target.attachToTarget",
                        {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
      self.call(f"{domain}.enable", session=session)
    self.call("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
              session)
    url = pathlib.Path(path).resolve().as_uri()
    self.call("Page.navigate", {"url": url}, session)
    self.wait_for("Page.loadEventFired", session)
    return Tab(self, target, session, url, width)

  def close(self) -> None:
    try:
      self.call("Browser.close")
    except Exception:  # noqa: BLE001 (a browser that died is stopped below all the same)
      pass
    self._stop()

  def _stop(self) -> None:
    self.connection.close()
    try:
      self.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    self.log.close()
    shutil.rmtree(self.profile, ignore_errors=True)


@dataclasses.dataclass
class Tab:
  """A loaded page."""
  browser: Chromium
  target: str
  session: str
  url: str
  width: int

  def __enter__(self) -> Tab:
    return self

  def __exit__(self, *_) -> None:
    self.browser.call("Target.closeTarget", {"targetId": self.target})

  def evaluate(self, expression: str) -> Any:
    """The value of a JavaScript expression in the page (JSON-like values)."""
    reply = self.browser.call("Runtime.evaluate", {"expression": expression,
                                                   "returnByValue": True}, self.session)
    if "exceptionDetails" in reply:
      raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
    return reply["result"].get("value")

  def _events(self, method: str) -> list[dict[str, Any]]:
    return [event["params"] for event in self.browser.events
            if event.get("method") == method and event.get("sessionId") == self.session]

  def requests(self) -> list[str]:
    """URLs the page asked for beyond its own file and its data: URIs."""
    asked = [event["request"]["url"] for event in self._events("Network.requestWillBeSent")]
    return [url for url in asked if url != self.url and not url.startswith("data:")]

  def errors(self) -> list[str]:
    """Console errors, uncaught exceptions and failed loads, as one line each."""
    errors = [" ".join(str(a.get("value", a.get("description", ""))) for a in event["args"])
              for event in self._events("Runtime.consoleAPICalled")
              if event["type"] in ("error", "assert")]
    errors += [event["exceptionDetails"].get("exception", {}).get("description")
               or event["exceptionDetails"]["text"]
               for event in self._events("Runtime.exceptionThrown")]
    errors += [f"{event['entry']['source']}: {event['entry']['text']}"
               for event in self._events("Log.entryAdded") if event["entry"]["level"] == "error"]
    errors += [f"load failed: {event['errorText']} {event.get('blockedReason', '')}"
               for event in self._events("Network.loadingFailed")]
    return errors

  def broken_images(self) -> list[str]:
    return self.evaluate("Array.from(document.images).filter(i => !i.complete || "
                         "i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 60))")

  def widths(self) -> tuple[int, int]:
    """(document width, window width): larger is a page that scrolls sideways."""
    return tuple(self.evaluate("[document.documentElement.scrollWidth, "
                               "document.documentElement.clientWidth]"))

  def screenshot(self, full_page: bool = False) -> bytes:
    """PNG of the window, or of the whole page."""
    params: dict[str, Any] = {"format": "png"}
    if full_page:
      size = self.browser.call("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
      params.update(captureBeyondViewport=True, clip={
          "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
    data = self.browser.call("Page.captureScreenshot", params, self.session)["data"]
    return base64.b64decode(data)

  def problems(self) -> list[str]:
    """What a reader would meet that a report page must never show, one line each."""
    found = [f"request leaving the file: {url}" for url in self.requests()]
    found += [f"console: {error}" for error in self.errors()]
    found += [f"broken image: {image}" for image in self.broken_images()]
    document, window = self.widths()
    if window != self.width:
      found.append(f"laid out {window} px wide in a {self.width} px window (no viewport meta?)")
    if document > window:
      found.append(f"scrolls sideways at {self.width} px: {document} px wide")
    with Image.open(io.BytesIO(self.screenshot())) as shot:
      colours = shot.convert("RGB").getcolors(maxcolors=MIN_COLOURS)
    if colours is not None:
      found.append(f"blank screenshot at {self.width} px: {len(colours)} colours")
    return found

  def verdict(self) -> list[tuple[str, str]]:
    """(report path, text) of each verdict sentence."""
    return [tuple(pair) for pair in self.evaluate(
        "Array.from(document.querySelectorAll('.verdict p[data-key]'))"
        ".map(p => [p.dataset.key, p.textContent])")]

  def numbers(self) -> list[tuple[str, Any, str]]:
    """(report path, exact value, text shown) of every number on the page."""
    return [(key, json.loads(value), text) for key, value, text in self.evaluate(
        "Array.from(document.querySelectorAll('data[data-key]'))"
        ".map(d => [d.dataset.key, d.value, d.textContent])")]

  def text(self) -> str:
    return self.evaluate("document.body.innerText")


def differences_from_report(tab: Tab, report: Mapping[str, Any]) -> list[str]:
  """Where the page's verdict and numbers differ from `report` (report.json as read)."""
  found = []
  for key, text in tab.verdict():
    if text != pages.lookup(report, key):
      found.append(f"verdict {key}: page {text!r}, report {pages.lookup(report, key)!r}")
  for key, value, text in tab.numbers():
    expected = pages.lookup(report, key)
    if value != expected or text != pages.format_number(expected):
      found.append(f"{key}: page {value!r} shown {text!r}, report {expected!r}")
  return found


def check_report_page(chromium: Chromium, page_path: str, report_path: str) -> None:
  """The page at `page_path` opens cleanly at a phone's and a desktop's width, and its verdict
  and every number on it equal those of the report at `report_path`."""
  with open(report_path) as handle:
    report = json.load(handle)
  for width in (PHONE, DESKTOP):
    with chromium.open(page_path, width) as tab:
      assert tab.problems() == [], page_path
      if width == PHONE:
        assert tab.numbers() and tab.verdict(), f"{page_path} shows no verdict or number"
        assert differences_from_report(tab, report) == []


def launch() -> Chromium:
  """A started Chromium; without one the calling test is skipped (outside CI) or fails (CI)."""
  if not os.access(CHROMIUM, os.X_OK):
    message = f"{CHROMIUM} is not installed (Debian: apt-get install chromium)"
    if in_ci():
      pytest.fail(f"{message}; CI must run the browser tests")
    pytest.skip(message)
  return Chromium()


@pytest.fixture(scope="module")
def chromium():
  """One browser for the test module."""
  browser = launch()
  yield browser
  browser.close()
