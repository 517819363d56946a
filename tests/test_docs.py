"""README.md and BUILD.md run: every command of their ```bash blocks and every ```python block is
executed, at toy size, so a promise there cannot drift from what the code does.

Each block runs as written, in a sandbox folder where every file name it uses exists (PLACES: the
real networks and photos of tests/assets.py, photo folders, NVIDIA pickles of the fixtures, the
`attack/` and `train/` folders, and `runs/demo`, made once by the README's own main job
command). Every `python -m MODULE` command gets overrides after its own flags that make it small:
TOY names, for the module and its --config file, the tiny config the command is made equal to,
and the fields that differ are appended as --config.FIELD=VALUE. Commands that cannot run here
are in NOT_RUN with the reason. A command of a module TOY does not know, or a command neither run
nor listed, fails test_every_command_is_run_or_listed until this table covers it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import ml_collections
import numpy as np
import pytest
from PIL import Image

from attack.configs import main_job_tiny, privacy_tiny, sweep_tiny
from tests import assets
from tests.multiprocess import REPO, free_port
from train.configs import classifier_tiny, diffusion_tiny, gan_dp_tiny

DOCS = ("README.md", "BUILD.md")
TIMEOUT = 900  # Seconds for one block.

# Commands (a line, or one part of an `&&` chain) that are not run, matched from their start.
NOT_RUN = {
    "python3 -m venv .venv": "creates the virtual environment these tests already run in",
    ". .venv/bin/activate": "enters the virtual environment these tests already run in",
    "pip install -e": "installs gmia from the package registry: .ci/run does it on a fresh clone",
    "python -m pytest -q tests": "the test suite itself, which runs this file (.ci/run runs it)",
    "import pickle, numpy as np, torch": "runs NVIDIA's code from a pickle: needs torch and a "
    "stylegan2-ada-pytorch checkout; tests/fixtures/stylegan2 holds outputs recorded this way",
}


def _photo_folders(root: str, people: tuple[str, ...]) -> str:
  """An identity folder (person/photo) of the real photos of `people`, linked."""
  for person, path in assets.photos():
    if person in people:
      os.makedirs(os.path.join(root, person), exist_ok=True)
      os.symlink(path, os.path.join(root, person, os.path.basename(path)))
  return root


def _square_faces(root: str) -> str:
  """A folder of images one square size, as an `images:` source needs: the centre squares of the
  real photos at 128 px (faces YuNet finds at its default settings)."""
  os.makedirs(root)
  for i, (_, path) in enumerate(assets.photos()):
    photo = Image.open(path).convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    square = photo.crop((left, top, left + side, top + side)).resize((128, 128), Image.LANCZOS)
    square.save(os.path.join(root, f"{i:05d}.png"))
  return root


def _nvidia_reference(path: str) -> str:
  """What README's torch block writes for ffhq.pkl, here for the fixture's uncond64.pkl: its z and
  NVIDIA's images at truncation 0.7 (recorded with NVIDIA's code, tests/test_import_stylegan2)."""
  with np.load(os.path.join(REPO, "tests", "fixtures", "stylegan2", "uncond64.npz")) as ref:
    np.savez(path, z=ref["z"], img=ref["img_psi07"])
  return path


STYLEGAN2 = os.path.join(REPO, "tests", "fixtures", "stylegan2")
TARGETS, POPULATION = ("macron", "ardern"), ("obama", "sunak", "biden")

# Every name the blocks use for a file or folder -> how the sandbox provides it (a path to link,
# or a function of the path to create).
PLACES: dict[str, Callable[[], str] | Callable[[str], str]] = {
    "attack": lambda: os.path.join(REPO, "attack"),
    "train": lambda: os.path.join(REPO, "train"),
    "face_recognition_sface_2021dec_int8bq.onnx": assets.sface_path,
    "face_detection_yunet_2023mar.onnx": assets.yunet_path,
    "fr_feature.onnx": assets.mobilefacenet_path,
    "people": lambda path: _photo_folders(path, TARGETS),
    "PHOTOS": lambda path: _photo_folders(path, TARGETS),
    "lfw_people": lambda path: _photo_folders(path, POPULATION),
    "my_photos": lambda path: os.path.join(_photo_folders(path + "_folders", ("macron",)),
                                           "macron"),
    "samples": _square_faces,
    "ffhq.pkl": lambda: os.path.join(STYLEGAN2, "uncond64.pkl"),
    "cifar10.pkl": lambda: os.path.join(STYLEGAN2, "cond32.pkl"),  # 5 classes, class 3 exists.
    "ffhq_ref.npz": _nvidia_reference,
}

# Text replaced before a block runs: a fixed port would collide with other tests' jobs.
REPLACE = {"127.0.0.1:12355": lambda: f"127.0.0.1:{free_port()}"}


def _tiny_data(config: ml_collections.ConfigDict) -> None:
  """The data block of the toy main job (so its split.json and face encoder fit)."""
  split_path = config.data.split.path
  config.data = main_job_tiny.get_config().data
  config.data.split.path = split_path


def _small_samples(samples: int) -> Callable:
  def toy(config, args):
    # An images: source has as many samples as its folder (10 photos, of which YuNet finds 8).
    config.update(num_samples=10 if "--config.generator=images:samples/" in args else samples,
                  chunk_size=16, topk=3)
    if "bootstrap_resamples" in config:
      config.bootstrap_resamples = 20
    return config
  return toy


def _calibration(config, args):
  config.main = main_job_tiny.get_config()
  config.reference_people = 2
  config.shadows.num_shadows = 0  # tests/test_main_job.py runs the job with shadows.
  return config


def _sweep_overrepresented(config, args):
  tiny = sweep_tiny.get_config()  # Already one over-represented member; one point.
  tiny.grid.update(photos=(1,))
  # The same data and split as the sweep before it in the block: its encoder and control serve.
  tiny.update(face_encoder_workdir="runs/sweep/face_encoder",
              control_workdir="runs/sweep/gan_control")
  return tiny


def _classifier(config, args):
  tiny = classifier_tiny.get_config()
  tiny.update(num_steps=2, checkpoint_every=2, eval_every=2, log_every=1)
  return tiny


def _decoder(config, args):
  _tiny_data(config)
  config.layers = ("stem",)  # The layer the inversion below reads.
  config.update(batch_size=4, num_eval=4, stats_images=8, checkpoint_every=2)
  for phase in ("aux", "blocks", "chain"):
    config[phase].num_steps = 2
  config.synthesis.update(num_images=8, batch_size=8, num_steps=2)
  return config


def _sface_data(config):
  config.data.update(identities=8, photos=2)
  config.data.split.update(members=2, non_members=2, shadow=2, reference_photos=1)


def _decoder_sface(config, args):
  _sface_data(config)
  config.update(batch_size=2, num_eval=2, stats_images=2, checkpoint_every=2,
                layers=("conv_1_relu",))
  config.aux.num_steps = 2
  return config


def _inversion(config, args):
  if config.network.preset == "sface":
    _sface_data(config)
    config.layers = ("conv_1_relu",)
  else:
    _tiny_data(config)
    config.layers = ("stem",)
  config.update(num_victims=2, gallery_size=2)
  config.inversion.update(num_steps=2, w_avg_samples=64)
  return config


def _latent_encoder(config, args):
  config.update(num_steps=2, batch_size=8, eval_samples=8, statistics_samples=64,
                checkpoint_every=2, log_every=1)
  config.optimizer.warmup_steps = 1
  return config


def _reconstruction(config, args):
  config.update(num_targets=2, num_samples=20, batch_size=4, grid_rows=2)
  config.projection.update(num_steps=2, w_avg_samples=64)
  return config


def _gan(config, args):
  config.update(num_steps=2, checkpoint_every=2, log_every=1)
  return config


def _gan_dp(config, args):
  tiny = gan_dp_tiny.get_config()
  tiny.update(num_steps=2, checkpoint_every=2, log_every=1)
  return tiny


def _diffusion(config, args):
  tiny = diffusion_tiny.get_config()
  tiny.data.split.path = config.data.split.path
  _tiny_data(tiny)
  tiny.update(num_steps=2, checkpoint_every=2, log_every=1)
  return tiny


def _privacy(config, args):
  # One private point, no filter: tests/test_privacy_job.py runs the whole job at toy size.
  tiny = privacy_tiny.get_config()
  tiny.update(epsilons=(50.0,), filter_thresholds=(), family=config.family)
  return tiny


def _unchanged(config, args):
  return config


def _sample(config, args):
  config.chunk_size = 16
  return config


# (module, its --config file or None for the module's default) -> (config, README's arguments)
# -> the tiny config the command is made equal to.
TOY: dict[tuple[str, str | None], Callable] = {
    ("attack.main_job", None): lambda config, args: main_job_tiny.get_config(),
    ("attack.sweep", None): lambda config, args: sweep_tiny.get_config(),
    ("attack.sweep", "attack/configs/sweep_overrepresented.py"): _sweep_overrepresented,
    ("attack.calibration", None): _calibration,
    ("attack.membership", None): _small_samples(48),
    ("attack.audit", None): _small_samples(48),
    ("attack.release_filter", None): _small_samples(48),
    ("attack.sample", None): _sample,
    ("attack.embed_photos", None): _unchanged,  # Four photos.
    ("train.train_classifier", "train/configs/classifier_cpu_demo.py"): _classifier,
    ("train.train_decoder", "train/configs/decoder_aux_cpu_demo.py"): _decoder,
    ("train.train_decoder", "train/configs/decoder_zero_shot_cpu_demo.py"): _decoder,
    ("train.train_decoder", "train/configs/decoder_aux_sface.py"): _decoder_sface,
    ("attack.feature_inversion", None): _inversion,
    ("attack.feature_inversion", "attack/configs/feature_inversion_sface.py"): _inversion,
    ("train.train_latent_encoder", "train/configs/latent_encoder_cpu_demo.py"): _latent_encoder,
    ("attack.reconstruction", None): _reconstruction,
    ("train.train_gan", "train/configs/gan_tiny.py"): _gan,
    ("train.train_gan", "train/configs/gan_dp_cpu_demo.py"): _gan_dp,
    ("train.train_diffusion", "train/configs/diffusion_cpu_demo.py"): _diffusion,
    ("attack.privacy", None): _privacy,
}

# What a block must leave behind where its commands' exit status does not tell (BUILD's loop
# starts both processes in the background, and `wait` returns 0 whatever they did).
EXPECT = {"runs/gan_2x2": "checkpoints/2/state"}


@dataclasses.dataclass
class Block:
  doc: str
  line: int
  language: str
  text: str

  @property
  def name(self) -> str:
    return f"{self.doc}:{self.line}"


def blocks() -> list[Block]:
  """The ```bash and ```python blocks of DOCS, in order."""
  found = []
  for doc in DOCS:
    with open(os.path.join(REPO, doc)) as handle:
      text = handle.read()
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
      if match.group(1) in ("bash", "python"):
        found.append(Block(doc, text.count("\n", 0, match.start()) + 1, match.group(1),
                           match.group(2)))
  return found


def shell_commands(block: Block) -> list[list[str]]:
  """The block's logical lines (continuations joined, comments dropped), each split into the
  commands of its `&&` chain."""
  lines = block.text.replace("\\\n", " ").splitlines()
  commands = []
  for line in lines:
    line = re.sub(r"\s+#.*$", "", line).strip()
    if line and not line.startswith("#"):
      commands.append([part.strip() for part in line.split("&&")])
  return commands


def not_run_reason(command: str) -> str | None:
  return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


# `python -m MODULE` and its arguments, up to a shell operator or the end of the line.
PYTHON_COMMAND = re.compile(r"python3? -m (?P<module>[\w.]+)(?P<args>(?:[ \t]+(?:\"[^\"]*\"|"
                            r"'[^']*'|[^\s&;|\"']+))*)")


def config_file(args: list[str]) -> str | None:
  files = [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
  return files[-1] if files else None


def default_config(module: str, path: str | None) -> ml_collections.ConfigDict:
  """The config a command starts from: its --config file, or the module's default one."""
  if path is None:
    path = os.path.join("attack" if module.startswith("attack.") else "train", "configs",
                        module.split(".")[1].removeprefix("train_") + ".py")
  spec = importlib.util.spec_from_file_location("docs_config", os.path.join(REPO, path))
  loaded = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loaded)
  return loaded.get_config()


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def toy_flags(module: str, args: list[str]) -> list[str]:
  """--config.FIELD=VALUE for every field in which the command's tiny config differs."""
  path = config_file(args)
  if (module, path) not in TOY:
    raise KeyError(f"no toy size for `python -m {module}` with --config={path}: add it to TOY")
  full = default_config(module, path)
  tiny = TOY[module, path](copy.deepcopy(full), args)
  before, after = leaves(full), leaves(tiny)
  unknown = sorted(set(after) - set(before))
  assert not unknown, f"the toy config of {module} has fields its config lacks: {unknown}"
  return [f"--config.{field}={value!r}" if isinstance(value, (tuple, list)) else
          f"--config.{field}={value}" for field, value in after.items()
          if value != before[field]]


def toy_script(block: Block) -> list[str]:
  """The block's shell statements as they run here (a loop is one statement, to its `done`):
  NOT_RUN commands left out, every python -m command followed by its toy overrides, REPLACE
  applied."""
  statements, loop = [], []
  for chain in shell_commands(block):
    kept = [command for command in chain if not_run_reason(command) is None]
    if not kept:
      continue

    def shrink(match):
      args = shlex.split(match.group("args"))
      extra = " ".join(shlex.quote(flag) for flag in toy_flags(match.group("module"), args))
      return f"{match.group(0)} {extra}"

    line = " && ".join(PYTHON_COMMAND.sub(shrink, command) for command in kept)
    for text, replacement in REPLACE.items():
      if text in line:
        line = line.replace(text, replacement())
    if loop or re.match(r"(for|while) ", line):
      loop.append(line)
      if re.match(r"done\b", line):
        statements.append("\n".join(loop))
        loop = []
    else:
      statements.append(line)
  assert not loop, f"{block.name}: a loop without its `done`"
  return statements


def environment(sandbox: str) -> dict[str, str]:
  """The commands' environment: gmia importable, and HOME the sandbox, so that what they keep
  under ~ (the data sets, in ~/tensorflow_datasets) stays there."""
  env = dict(os.environ)
  env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), HOME=sandbox,
             JAX_PLATFORMS="cpu")
  return env


def run_shell(statements: list[str], sandbox: str) -> None:
  """Runs the statements in the sandbox, printing each one's wall and CPU time; fails naming
  the statement."""
  for line in statements:
    started, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=sandbox,
                          env=environment(sandbox), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"{line}\n--- exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    print(f"{time.perf_counter() - started:6.1f} s, {_children_cpu() - cpu:6.1f} CPU s: "
          f"{line[:90]}")


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


MAIN_JOB = "python -m attack.main_job --workdir=runs/demo"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
  """The folder every block runs in, with PLACES and runs/demo (README's main job command, at toy
  size, run once here)."""
  root = str(tmp_path_factory.mktemp("docs"))
  for name, provide in PLACES.items():
    path = os.path.join(root, name)
    made = provide(path) if provide.__code__.co_argcount else provide()
    if made != path:
      os.symlink(os.path.abspath(made), path)
  os.makedirs(os.path.join(root, "runs"))
  first = [c for chain in shell_commands(blocks()[0]) for c in chain if c.startswith(MAIN_JOB)]
  assert first, f"README's first block no longer runs `{MAIN_JOB}`"
  run_shell(toy_script(Block("README.md", 0, "bash", first[0])), root)
  return root


def test_every_command_is_run_or_listed():
  every = [(block, command) for block in blocks() if block.language == "bash"
           for chain in shell_commands(block) for command in chain]
  assert len(every) > 20
  for block, command in every:
    if not_run_reason(command) is None:
      for match in PYTHON_COMMAND.finditer(command):
        toy_flags(match.group("module"), shlex.split(match.group("args")))  # Raises if unknown.
  used = {start for start in NOT_RUN if any(
      command.startswith(start) for _, command in every) or any(
      block.text.startswith(start) for block in blocks())}
  assert used == set(NOT_RUN), f"NOT_RUN lists what no block holds: {set(NOT_RUN) - used}"


@pytest.mark.parametrize("block", blocks(), ids=lambda block: block.name)
def test_block_runs(block, sandbox):
  if block.language == "python":
    reason = not_run_reason(block.text)
    if reason is not None:
      pytest.skip(reason)
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=sandbox,
                          env=environment(sandbox), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if "ffhq_ref.npz" in block.text:  # README: the import reproduces NVIDIA's outputs within 1e-4.
      assert float(proc.stdout.split()[-1]) < 1e-4, proc.stdout
    return
  # The main job's own command ran in the sandbox fixture.
  statements = [line for line in toy_script(block) if not line.startswith(MAIN_JOB)]
  script = "\n".join(statements)
  if "--workdir=runs/sim8" in script:
    # The main job again, on 8 devices: its stages reused but the attacks, which run again.
    shutil.copytree(os.path.join(sandbox, "runs", "demo"), os.path.join(sandbox, "runs", "sim8"),
                    ignore=shutil.ignore_patterns("attack", "attack_control", "calibration"))
  run_shell(statements, sandbox)
  for workdir in re.findall(r"--workdir=(\S+)", script):
    assert os.listdir(os.path.join(sandbox, workdir)), workdir
    if workdir in EXPECT:
      assert os.path.exists(os.path.join(sandbox, workdir, EXPECT[workdir])), workdir
  if "--workdir=runs/sim8" in script:
    # BUILD: the results of 8 simulated devices match the single-device run.
    one, eight = (json.load(open(os.path.join(sandbox, "runs", name, "summary.json")))
                  for name in ("demo", "sim8"))
    assert eight.keys() == one.keys()
    for attack in one:
      for score in one[attack]:
        assert eight[attack][score]["auc"] == pytest.approx(one[attack][score]["auc"], abs=1e-6)
