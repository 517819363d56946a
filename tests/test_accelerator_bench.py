"""bench/accelerator.py at toy sizes on a CPU: every section runs and prints its numbers.

The benchmark's real run needs a GPU machine (its docstring gives the one-call command); this
runs every section, peer and ratio end to end at tiny sizes so that the call on a device is not
spent on a broken section. NVIDIA's stylegan2-ada-pytorch needs torch, absent in CI, and its
code fetched into bench/.peers: without them the NVIDIA lines are a skip with the reason, and the
rest (gmia's generators, the attack's stand-in generator) runs without them.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests import assets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "accelerator.py")
NUMBER = r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
NVIDIA_PEER = (importlib.util.find_spec("torch") is not None
               and os.path.isdir(os.path.join(REPO, "bench", ".peers", "stylegan2-ada-pytorch")))


def run_bench(*flags: str) -> subprocess.CompletedProcess:
  done = subprocess.run([sys.executable, SCRIPT, "--toy", *flags], capture_output=True,
                        text=True, timeout=900)
  print(done.stdout)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """(printed lines, the --json file) of one whole toy run."""
  # Fetched here so that a machine without a registry skips, rather than fails, the run.
  sface, yunet = assets.sface_path(), assets.yunet_path()
  json_path = str(tmp_path_factory.mktemp("accelerator") / "accelerator.json")
  done = run_bench("--sface", sface, "--yunet", yunet, "--json", json_path)
  with open(json_path) as f:
    return done.stdout.splitlines(), json.load(f)


def lines_matching(lines, pattern):
  return [line for line in lines if re.search(pattern, line)]


def test_every_section_prints_its_numbers_against_its_peer(toy):
  lines, _ = toy
  expected = [
      r"^GPU: .*; JAX \S+ \(cpu\), 1 device\(s\)",
      rf"^matmul bf16 256\^3 .*: {NUMBER} TFLOP/s",
      rf"^matmul f32 256\^3 .*HIGHEST.*: {NUMBER} TFLOP/s",
      rf"^top-k kernel bf16 2,048 x 2,048 x 64, k 10.*: {NUMBER} TFLOP/s, {NUMBER} of the bf16 "
      "matmul",
      rf"^top-k kernel f32 .*: {NUMBER} TFLOP/s, {NUMBER} of the f32 matmul",
      rf"^SFace batch 4: gmia {NUMBER} embeddings/s .*onnxruntime {NUMBER}/s .*ratio {NUMBER}",
      rf"^YuNet 640 px, 2 photos: gmia detect_faces {NUMBER} photos/s .*network alone "
      rf"{NUMBER}/s; onnxruntime network {NUMBER}/s .*ratio {NUMBER}",
      rf"^attack at 32 px, .*YuNet at \d+ px \+ SFace.*: {NUMBER} samples/s end to end.*peak "
      rf".* {NUMBER} MiB",
      r"^== summary",
      rf"^wall time {NUMBER} s",
  ]
  peer = rf", {NUMBER}x NVIDIA" if NVIDIA_PEER else ""
  for resolution, variant in ((32, "batched"), (64, "batched"), (32, "fused")):
    expected.append(rf"^gmia {resolution} px {variant} .*: {NUMBER} images/s \(compile "
                    rf"{NUMBER} s\){peer}")
  for resolution in (32, 64) if NVIDIA_PEER else ():
    expected.append(rf"^NVIDIA {resolution} px .*: {NUMBER} images/s on \S+ with ")
  if not NVIDIA_PEER:
    expected.append(r"^NVIDIA: skipped: .*(torch is not importable|stylegan2-ada-pytorch is "
                    r"not at)")
  for pattern in expected:
    assert lines_matching(lines, pattern), f"no line matches {pattern!r}"
  assert not lines_matching(lines, r": (failed|stopped|not run)"), "a section did not finish"
  if not NVIDIA_PEER:
    print("NVIDIA's peer was skipped (torch or bench/.peers absent), as the output says")


def test_ratios_are_those_of_the_records_and_the_json_is_strict(toy):
  lines, report = toy
  records = report["records"]
  kinds = {r["kind"] for r in records}
  assert {"header", "matmul", "topk", "stylegan", "sface", "yunet", "attack"} <= kinds
  for record in records:
    for value in record.values():
      assert not isinstance(value, float) or math.isfinite(value)
  matmul = {r["dtype"]: r["tflops"] for r in records if r["kind"] == "matmul"}
  for r in (r for r in records if r["kind"] == "topk"):
    line, = lines_matching(lines, rf"^top-k kernel {r['dtype']} {NUMBER} x")
    share = float(re.search(rf"({NUMBER}) of the", line).group(1))
    assert share == pytest.approx(r["tflops"] / matmul[r["dtype"]], abs=0.006)
  sface, = (r for r in records if r["kind"] == "sface")
  line, = lines_matching(lines, "^SFace batch")
  assert float(line.rsplit("ratio ", 1)[1]) == pytest.approx(
      sface["gmia_per_s"] / sface["peer_per_s"], abs=0.006)
  attack, = (r for r in records if r["kind"] == "attack")
  # Detection thresholds are off: every sample is embedded and observed.
  assert attack["observed"] == attack["samples"] == 16
  assert attack["peak_mib"] > 0


def test_a_failing_section_is_one_line_and_the_others_still_run(tmp_path):
  missing = str(tmp_path / "missing.onnx")
  done = run_bench("--sections", "header,faces", "--sface", missing, "--yunet", missing)
  lines = done.stdout.splitlines()
  assert lines_matching(lines, r"^GPU: ")
  failed = lines_matching(lines, r"^faces: failed: ")
  assert len(failed) == 2  # Where it happened and in the summary.
  assert "missing.onnx" in failed[0]
