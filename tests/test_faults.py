"""Every kind of file a user hands gmia, tried bad through the real command lines.

Kinds: NVIDIA pickles, `images:` sources (a folder, an .npz, a .tar), photo folders, split.json,
config files and --config overrides, ONNX models (generator, matcher, detector) and checkpoints.
Faults: empty, truncated at several points, random bytes, a valid file of another kind, and
hostile files (a call of a global off the allow-list, a tar member outside its folder or a link,
headers and tensors declaring absurd sizes). Every case must end with exit status 1 (not a
crash), or where skipping is the documented behaviour (photos) with exit 0 and the file skipped
and named; at most 3 lines on stderr, naming the file and the problem; nothing changed outside
the workdir, nothing but its lock file left in it; and the command's peak RSS less than
MEMORY_BOUND above its start, a quarter of the 1 GiB the hostile files declare.

Each command runs as `python -m MODULE ARGS` would, in a process forked from one server that
imported JAX and gmia once (an import costs seconds, the table has a hundred cases): the entry
module runs as __main__ with the same argv, stdout and stderr are its own files, its peak RSS
comes from wait4. test_the_server_runs_a_command_as_python_m_does compares one case both ways.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gmia import parallel, sources, viz, workdir
from gmia.checkpoint import CHECKSUMS
from gmia.faces import embedder
from gmia.models import nvidia_pickle
from gmia.sources import image_files
from tests import assets, dcgan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "stylegan2")
GIB = 1 << 30
MEMORY_BOUND = GIB // 4
MAX_STDERR_LINES = 3

SERVER = r"""
import json, os, runpy, sys, traceback
sys.path[0] = os.getcwd()  # The repository, as for `python -m` run there, wherever commands run.
import jax  # noqa: F401  Imported once; each command's process is forked from here.
from gmia import cli  # noqa: F401
from gmia.jobs import embed_photos, membership, sample  # noqa: F401


def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


for line in sys.stdin:
  case = json.loads(line)
  pid = os.fork()
  if not pid:
    code = 70
    try:
      os.chdir(case["cwd"])
      with open(case["out"] + ".start", "w") as f:
        f.write(str(rss()))
      for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(f"{case['out']}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      sys.argv = [case["module"], *case["args"]]
      sys.path[:0] = case["sys_path"]
      try:
        runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
        code = 0
      except SystemExit as exit:  # As the interpreter exits on it.
        if exit.code is None or isinstance(exit.code, int):
          code = exit.code or 0
        else:
          print(exit.code, file=sys.stderr)
          code = 1
      except BaseException:
        traceback.print_exc()
        code = 1
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  _, status, usage = os.wait4(pid, 0)
  print(json.dumps({"status": os.waitstatus_to_exitcode(status), "peak": usage.ru_maxrss * 1024}),
        flush=True)
"""


@dataclasses.dataclass
class Outcome:
  status: int
  stdout: str
  stderr: str
  growth: int  # Bytes of peak RSS above the command's start.


class Server:
  """Runs command lines in processes forked from one that imported JAX and gmia."""

  def __init__(self):
    self.process = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)

  def run(self, module: str, args: list[str], cwd: pathlib.Path,
          sys_path: tuple[str, ...] = (), out: pathlib.Path | None = None) -> Outcome:
    """Runs `python -m module args` in `cwd` (with `sys_path` before the repository); its
    output files go to `out` (default `cwd`) and are read back and removed."""
    out = str((out or cwd) / "command")
    self.process.stdin.write(json.dumps({"module": module, "args": args, "cwd": str(cwd),
                                         "out": out, "sys_path": list(sys_path)}) + "\n")
    self.process.stdin.flush()
    reply = self.process.stdout.readline()
    assert reply, "the command server died"
    result = json.loads(reply)
    read = lambda name: pathlib.Path(f"{out}.{name}").read_text(errors="replace")
    start = int(read("start"))
    outcome = Outcome(result["status"], read("stdout"), read("stderr"), result["peak"] - start)
    for name in ("start", "stdout", "stderr"):
      os.remove(f"{out}.{name}")
    return outcome

  def close(self):
    self.process.stdin.close()
    self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
  running = Server()
  yield running
  running.close()


# ---------------------------------------------------------------- files, good and bad

def random_bytes(size: int = 4096, seed: int = 0) -> bytes:
  return np.random.default_rng(seed).bytes(size)


def truncations(data: bytes) -> dict[str, bytes]:
  """`data` cut after one byte, at a quarter, half and three quarters, and short of one byte."""
  return {"truncated_to_1_byte": data[:1], "truncated_at_1/4": data[:len(data) // 4],
          "truncated_at_1/2": data[:len(data) // 2],
          "truncated_at_3/4": data[:3 * len(data) // 4], "truncated_by_1_byte": data[:-1]}


def png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  viz.Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def images(count: int = 4, side: int = 16, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def png_declaring(width: int, height: int) -> bytes:
  """A PNG whose header declares width x height 8-bit grey pixels, with one row of data."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


def npz(arrays: dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def npz_declaring(shape: tuple[int, ...]) -> bytes:
  """An .npz whose array `images` declares u8 `shape`, with 64 bytes of data."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                "shape": shape})
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    archive.writestr("images.npy", header.getvalue() + b"\0" * 64)
  return buffer.getvalue()


def tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
  buffer = io.BytesIO()
  level = {"compresslevel": 1} if mode == "w:gz" else {}
  with tarfile.open(fileobj=buffer, mode=mode, **level) as archive:
    for info, data in members:
      if data is not None:
        info.size = len(data)
      archive.addfile(info, None if data is None else io.BytesIO(data))
  return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  info.type, info.linkname = kind, link
  return info


def tar_declaring(size: int) -> bytes:
  """A tar whose one member, 000.png, declares `size` bytes and holds none."""
  info = member("000.png")
  info.size = size
  return info.tobuf() + bytes(1024)


def good_tar() -> bytes:
  """Four PNG members; without the zero blocks that end a tar, so that every truncation cuts
  into a member (a tar cut in its end blocks is still whole)."""
  return tar([(member(f"samples/{i:03d}.png"), png(image))
              for i, image in enumerate(images())]).rstrip(b"\0")


# ---- pickles written opcode by opcode: any global, called with any arguments, run by no one here

@dataclasses.dataclass(frozen=True)
class Global:
  name: str  # module.attribute


@dataclasses.dataclass(frozen=True)
class Call:
  """function(*args), then the result's state set to `state` (BUILD) unless it is None."""
  function: str  # module.attribute
  args: tuple = ()
  state: Any = None


class Assembler(pickle._Pickler):  # The pure-Python pickler, whose save() can be extended.
  """Pickles Global as GLOBAL and Call as GLOBAL args REDUCE [state BUILD]; `storage` as a
  persistent id."""

  def __init__(self, file, storage: tuple | None = None):
    super().__init__(file, protocol=4)
    self.storage = storage

  def persistent_id(self, obj: Any) -> Any:
    return self.storage if obj is Storage else None

  def save(self, obj: Any, save_persistent_id: bool = True) -> None:
    if not isinstance(obj, (Global, Call)):
      super().save(obj, save_persistent_id)
      return
    module, name = (obj.name if isinstance(obj, Global) else obj.function).rsplit(".", 1)
    self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
    if isinstance(obj, Call):
      super().save(obj.args)
      self.write(pickle.REDUCE)
      if obj.state is not None:
        super().save(obj.state)
        self.write(pickle.BUILD)


class Storage:
  """Stands for the storage object in a legacy storage pickle (a persistent id)."""


def assemble(obj: Any, storage: tuple | None = None) -> bytes:
  buffer = io.BytesIO()
  Assembler(buffer, storage).dump(obj)
  return buffer.getvalue()


def legacy_storage(values: np.ndarray, declared: int | None = None) -> bytes:
  """torch.save's legacy bytes of a FloatStorage of `values` (declaring `declared` elements)."""
  numel = len(values) if declared is None else declared
  parts = [pickle.dumps(nvidia_pickle.LEGACY_MAGIC, protocol=4),
           pickle.dumps(nvidia_pickle.LEGACY_PROTOCOL, protocol=4),
           pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=4),
           assemble(Storage, ("storage", Global("torch.FloatStorage"), "0", "cpu", numel)),
           pickle.dumps(["0"], protocol=4)]
  return b"".join(parts) + numel.to_bytes(8, "little") + values.astype("<f4").tobytes()


def tensor(storage: bytes, size: tuple, stride: tuple) -> Call:
  return Call("torch._utils._rebuild_tensor_v2",
              (Call("torch.storage._load_from_bytes", (storage,)), 0, size, stride, False,
               Call("collections.OrderedDict")))


def numpy_array(shape: tuple, dtype: Call, data: Any) -> Call:
  """numpy's pickle of an array: _reconstruct(ndarray, (0,), b'b'), then its state."""
  return Call("numpy.core.multiarray._reconstruct", (Global("numpy.ndarray"), (0,), b"b"),
              (1, shape, dtype, False, data))


F32 = Call("numpy.dtype", ("f4", False, True))
OBJECT = Call("numpy.dtype", ("O8", False, True))


# ---- tiny ONNX networks: a generator, a matcher

def onnx_bytes(nodes, inputs, outputs, initializers=()) -> bytes:
  model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers)),
                            opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  return model.SerializeToString()


def tiny_generator(height: int = 16, width: int = 16) -> bytes:
  """z f32[1, 8] -> tanh(z @ w) as an image f32[1, 3, height, width]."""
  w = np.random.default_rng(0).normal(size=(8, 3 * height * width)).astype(np.float32)
  return onnx_bytes(
      [helper.make_node("MatMul", ["z", "w"], ["m"]),
       helper.make_node("Reshape", ["m", "shape"], ["r"]), helper.make_node("Tanh", ["r"], ["y"])],
      [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, height, width])],
      [numpy_helper.from_array(w, "w"),
       numpy_helper.from_array(np.array([1, 3, height, width], np.int64), "shape")])


def tiny_matcher() -> bytes:
  """crops f32[1, 3, 112, 112] (arcface's size) -> embeddings f32[1, 8]."""
  w = np.random.default_rng(1).normal(size=(3 * 112 * 112, 8)).astype(np.float32)
  return onnx_bytes(
      [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
      [numpy_helper.from_array(w, "w")])


def external_data(location: str) -> bytes:
  """The tiny generator with its weight stored as external data at `location`."""
  model = onnx.load_from_string(tiny_generator())
  weight = model.graph.initializer[0]
  weight.ClearField("raw_data")
  weight.data_location = TensorProto.EXTERNAL
  entry = weight.external_data.add()
  entry.key, entry.value = "location", location
  return model.SerializeToString()


# ---------------------------------------------------------------- the cases

class Inputs:
  """What a case builds its files from: a folder of its own, and the shared good files."""

  def __init__(self, folder: pathlib.Path, request):
    self.folder, self.request = folder, request

  def write(self, name: str, data: bytes | str) -> str:
    path = self.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)

  @property
  def models(self) -> tuple[str, str]:
    return self.request.getfixturevalue("models")

  @property
  def matcher(self) -> str:
    return self.write("matcher.onnx", tiny_matcher())

  def photos(self, name: str, data: bytes) -> tuple[str, str]:
    """(folder, the bad photo): a folder holding a good photo and `name`."""
    folder = self.folder / "photos"
    self.write("photos/good.png", png(images(1, 16)[0]))
    return str(folder), self.write(f"photos/{name}", data)


Command = tuple[str, list[str]]


def sample(generator: str) -> Command:
  return "attack.sample", [f"--config.generator={generator}", "--config.num=2",
                           "--config.chunk_size=2"]


def embed_photos(folder: str, matcher: str, *extra: str) -> Command:
  return "attack.embed_photos", [f"--config.photos_dir={folder}",
                                 f"--config.matcher.path={matcher}", *extra]


@dataclasses.dataclass(frozen=True)
class Case:
  """make(inputs) -> (what stderr must name, the command); problem: a regex stderr must match;
  skipped: the documented outcome is a skip (exit 0, the file named and in skipped.csv)."""
  kind: str
  fault: str
  make: Callable[[Inputs], tuple[str, Command]]
  problem: str
  skipped: bool = False


def file_case(kind: str, fault: str, name: str, data: Callable[[Inputs], bytes | str] | bytes,
              command: Callable[[Inputs, str], Command], problem: str,
              skipped: bool = False) -> Case:
  """A case whose bad file `name` holds `data` and is handed to `command(inputs, path)`."""
  def make(inputs: Inputs) -> tuple[str, Command]:
    path = inputs.write(name, data(inputs) if callable(data) else data)
    return path, command(inputs, path)
  return Case(kind, fault, make, problem, skipped)


def pickle_cases() -> list[Case]:
  command = lambda _, path: sample(f"stylegan2_pkl:{path}")
  good = pathlib.Path(FIXTURES, "uncond64.pkl").read_bytes()
  one = np.ones(1, np.float32)
  faults = {
      "empty": (b"", "the file is empty"),
      **{fault: (data, "not a readable network pickle")
         for fault, data in truncations(good).items()},
      "random_bytes": (random_bytes(), "not a readable network pickle"),
      "other_kind:split.json": (json.dumps({"format": "gmia.identity_split/1"}),
                                "not a readable network pickle"),
      "other_kind:npz": (npz({"images": images()}), "zip archive"),
      "other_kind:onnx": (tiny_generator(), "not a readable network pickle"),
      "other_kind:pickle_without_networks": (pickle.dumps({"G": [1, 2]}, protocol=4),
                                             "no network 'G_ema'"),
      "hostile:os.system": (assemble({"G_ema": Call("os.system", ("touch pwned",))}),
                            r"global os\.system is not on the allow-list"),
      "hostile:exec": (assemble(Call("builtins.exec", ("open('pwned', 'w')",))),
                       r"global builtins\.exec is not on the allow-list"),
      "hostile:stride_0_tensor_of_1GiB": (
          assemble({"G_ema": tensor(legacy_storage(one), (16384, 16384), (0, 0))}),
          r"declares 268435456 elements, its storage holds 1"),
      "hostile:bytearray_of_1GiB": (assemble({"G_ema": Call("builtins.bytearray", (GIB,))}),
                                    r"bytearray\(1073741824\)"),
      "hostile:bytearray_of_2^62": (assemble({"G_ema": Call("builtins.bytearray", (1 << 62,))}),
                                    r"bytearray\(4611686018427387904\)"),
      "hostile:storage_declaring_2^40_floats": (
          assemble({"G_ema": tensor(legacy_storage(one, 1 << 40), (1,), (1,))}),
          "tensor storage 0 is truncated"),
      "hostile:numpy_array_declaring_1GiB": (
          assemble({"G_ema": numpy_array((16384, 16384), F32, b"\0" * 4)}),
          r"numpy array of shape \(16384, 16384\)"),
      "hostile:numpy_object_array_short_list": (  # numpy itself would crash on it.
          assemble({"G_ema": numpy_array((1 << 20,), OBJECT, [1])}),
          "only arrays of numbers are read"),
  }
  cases = [file_case("pkl", fault, "net.pkl", data, command, problem)
           for fault, (data, problem) in faults.items()]
  cases.append(Case("pkl", "missing", lambda i: (str(i.folder / "no.pkl"),
                                                 sample(f"stylegan2_pkl:{i.folder / 'no.pkl'}")),
                    "No such file"))
  return cases


def images_cases() -> list[Case]:
  def folder_case(fault: str, files: dict[str, bytes], problem: str, named: str = "") -> Case:
    def make(inputs: Inputs) -> tuple[str, Command]:
      folder = inputs.folder / "samples"
      folder.mkdir()
      for name, data in files.items():
        inputs.write(f"samples/{name}", data)
      return str(folder / named) if named else str(folder), sample(f"images:{folder}")
    return Case("images:folder", fault, make, problem)

  def symlink_case(inputs: Inputs) -> tuple[str, Command]:
    folder = inputs.folder / "samples"
    folder.mkdir()
    inputs.write("samples/000.png", png(images(1)[0]))
    os.symlink("/etc/hostname", folder / "001.png")
    return str(folder / "001.png"), sample(f"images:{folder}")

  good_png = png(images(1)[0])
  cases = [
      folder_case("empty", {}, "holds no images"),
      folder_case("empty_file", {"000.png": b""}, "empty file", "000.png"),
      *[folder_case(fault, {"000.png": data}, "cannot decode|not an image", "000.png")
        for fault, data in truncations(good_png).items() if fault != "truncated_by_1_byte"],
      folder_case("random_bytes", {"000.png": random_bytes()}, "not an image", "000.png"),
      folder_case("other_kind:npz_named_png", {"000.png": npz({"images": images()})},
                  "not an image", "000.png"),
      folder_case("other_kind:not_square", {"000.png": png(images(1, 16)[0][:, :8])},
                  "must be square", "000.png"),
      folder_case("hostile:decompression_bomb", {"000.png": png_declaring(100_000, 100_000)},
                  "decompression bomb", "000.png"),
      Case("images:folder", "hostile:symlink_to_a_system_file", symlink_case, "not an image"),
  ]
  npz_command = lambda _, path: sample(f"images:{path}")
  npz_faults = {
      "empty": (b"", "not an .npz file"),
      **{fault: (data, "not an .npz file") for fault, data in
         truncations(npz({"images": images()})).items()},
      "random_bytes": (random_bytes(), "not an .npz file"),
      "other_kind:tar": (good_tar(), "not an .npz file"),
      "other_kind:no_images_array": (npz({"pictures": images()}), "has no array 'images'"),
      "other_kind:wrong_shape": (npz({"images": images()[..., 0]}), r"u8\[N, H, W, 3\]"),
      "other_kind:float_images": (npz({"images": images().astype(np.float32)}),
                                  r"u8\[N, H, W, 3\]"),
      "other_kind:object_array": (npz({"images": np.array([b"x", 1], object)}),
                                  r"u8\[N, H, W, 3\]"),
      "hostile:header_declaring_1TiB": (npz_declaring((1 << 16, 2048, 2048, 3)),
                                        r"declares 65536 images .* holds 64 bytes"),
  }
  cases += [file_case("images:npz", fault, "samples.npz", data, npz_command, problem)
            for fault, (data, problem) in npz_faults.items()]
  tar_faults = {
      "empty": (b"", "not a .tar file"),
      **{fault: (data, "not a .tar file|cannot decode|not an image")
         for fault, data in truncations(good_tar()).items()},
      "random_bytes": (random_bytes(), "not a .tar file"),
      "other_kind:npz": (npz({"images": images()}), "not a .tar file"),
      "other_kind:no_image_members": (tar([(member("notes.txt"), b"text")]), "holds no images"),
      "other_kind:text_named_png": (tar([(member("000.png"), b"not an image")]), "not an image"),
      "hostile:member_climbing_out": (tar([(member("../000.png"), good_png)]),
                                      "outside the archive's folder"),
      "hostile:member_deep_climbing_out": (tar([(member("a/../../000.png"), good_png)]),
                                           "outside the archive's folder"),
      "hostile:absolute_member": (tar([(member("/tmp/000.png"), good_png)]),
                                  "outside the archive's folder"),
      "hostile:symlink_member": (tar([(member("000.png", tarfile.SYMTYPE, "/etc/passwd"),
                                       None)]), "is a link"),
      "hostile:hardlink_member": (tar([(member("a.png"), good_png),
                                       (member("000.png", tarfile.LNKTYPE, "a.png"), None)]),
                                  "is a link"),
      "hostile:fifo_member": (tar([(member("000.png", tarfile.FIFOTYPE), None)]),
                              "not a file or a folder"),
      "hostile:decompression_bomb_member": (tar([(member("000.png"),
                                                  png_declaring(100_000, 100_000))]),
                                            "decompression bomb"),
      "hostile:member_declaring_1GiB": (tar_declaring(GIB), "not a .tar file"),
      "hostile:compressed_member_of_zeros": (
          lambda _: tar([(member("000.png"), bytes(image_files.MAX_MEMBER_BYTES + 1))], "w:gz"),
          "more than an image gmia reads"),
  }
  cases += [file_case("images:tar", fault, "samples.tar.gz" if "compressed" in fault else
                      "samples.tar", data, npz_command, problem)
            for fault, (data, problem) in tar_faults.items()]
  return cases


def photo_cases() -> list[Case]:
  """Photo folders: an unreadable photo is skipped and named (the documented behaviour)."""
  def photo_case(fault: str, name: str, data: bytes, problem: str) -> Case:
    def make(inputs: Inputs) -> tuple[str, Command]:
      folder, bad = inputs.photos(name, data)
      return bad, embed_photos(folder, inputs.matcher)
    return Case("photos", fault, make, problem, skipped=True)

  def symlink(inputs: Inputs) -> tuple[str, Command]:
    folder, _ = inputs.photos("placeholder.txt", b"")
    os.symlink("/etc/hostname", os.path.join(folder, "x.jpg"))
    return os.path.join(folder, "x.jpg"), embed_photos(folder, inputs.matcher)

  def empty_folder(inputs: Inputs) -> tuple[str, Command]:
    folder = inputs.folder / "photos"
    folder.mkdir()
    return str(folder), embed_photos(str(folder), inputs.matcher)

  jpeg = io.BytesIO()
  viz.Image.fromarray(images(1, 64)[0]).save(jpeg, format="JPEG")
  return [
      photo_case("empty", "x.jpg", b"", "empty file"),
      *[photo_case(fault, "x.jpg", data, "cannot decode|not an image")
        for fault, data in truncations(jpeg.getvalue()).items()],
      photo_case("random_bytes", "x.jpg", random_bytes(), "not an image"),
      photo_case("other_kind:npz_named_jpg", "x.jpg", npz({"images": images()}), "not an image"),
      photo_case("other_kind:split_named_png", "x.png", b'{"format": "gmia.identity_split/1"}',
                 "not an image"),
      photo_case("hostile:decompression_bomb", "x.png", png_declaring(100_000, 100_000),
                 "decompression bomb"),
      Case("photos", "hostile:symlink_to_a_system_file", symlink, "not an image", skipped=True),
      Case("photos", "empty_folder", empty_folder, "no photos in"),
  ]


def split_cases() -> list[Case]:
  def command(inputs: Inputs, path: str) -> Command:
    gan, encoder = inputs.models
    return "attack.membership", [f"--config.generator=gmia:{gan}",
                                 f"--config.matcher.path={encoder}", f"--config.split_path={path}",
                                 "--config.num_samples=4", "--config.chunk_size=4",
                                 "--config.topk=2"]

  def good(inputs: Inputs) -> dict:
    return json.loads(pathlib.Path(inputs.models[0], "split.json").read_text())

  def changed(change: Callable[[dict], Any]) -> Callable[[Inputs], str]:
    def data(inputs: Inputs) -> str:
      split = good(inputs)
      change(split)
      return json.dumps(split)
    return data

  def truncated(fraction: float) -> Callable[[Inputs], str]:
    return lambda inputs: json.dumps(good(inputs))[:max(1, int(fraction * len(json.dumps(
        good(inputs)))))]

  faults = {
      "empty": (b"", "not valid JSON"),
      **{f"truncated_at_{f}": (truncated(f), "not valid JSON") for f in (0, 0.25, 0.5, 0.999)},
      "random_bytes": (random_bytes(), "not valid JSON"),
      "other_kind:pickle": (pickle.dumps({"format": "gmia.identity_split/1"}), "not valid JSON"),
      "other_kind:json_list": ("[1, 2, 3]", "not a gmia identity split .*a JSON list"),
      "other_kind:inputs.json": ('{"generator": {"kind": "gmia"}, "seed": 0}',
                                 "not a gmia identity split"),
      "missing_field:groups": (changed(lambda s: s.pop("groups")),
                               r"field 'groups' must be a JSON object, it is missing"),
      "wrong_type:groups.members": (changed(lambda s: s["groups"].update(members="12")),
                                    r"field 'groups.members' must be a JSON list"),
      "wrong_type:seed": (changed(lambda s: s.update(seed="zero")),
                          r"field 'seed' must be a JSON integer, it is a str"),
      "hostile:ids_beyond_int64": (changed(lambda s: s["groups"]["members"].append(1 << 70)),
                                   r"field 'groups.members' must be a list of 64-bit integers"),
      "hostile:infinite_id": (lambda i: changed(lambda s: None)(i).replace(
          '"members": [', '"members": [1e999, '),
          r"field 'groups.members' must be a list of 64-bit integers"),
      "hostile:identity_in_two_groups": (
          changed(lambda s: s["groups"]["encoder"].append(s["groups"]["members"][0])),
          "is in both members and encoder"),
      "hostile:nested_100000_deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
  }
  return [file_case("split.json", fault, "split.json", data, command, problem)
          for fault, (data, problem) in faults.items()]


def config_cases() -> list[Case]:
  def command(_: Inputs, path: str) -> Command:
    return "attack.sample", [f"--config={path}", "--config.generator=images:x"]

  good = pathlib.Path(REPO, "attack", "configs", "sample.py").read_text()
  faults = {
      "empty": ("", "has no get_config"),
      **{fault: (data, "fails to load") for fault, data in
         truncations(good.encode()).items() if fault != "truncated_by_1_byte"},
      "random_bytes": (random_bytes(), "fails to load"),
      "other_kind:split.json": ('{"format": "gmia.identity_split/1"}', "has no get_config"),
      "other_kind:pickle": (pickle.dumps({"num": 2}), "fails to load"),
      "raises_in_get_config": ("def get_config():\n  raise RuntimeError('no config here')\n",
                               r"fails to load \(line 2\): RuntimeError: no config here"),
      "raises_at_import": ("import nowhere_to_be_found\n",
                           r"fails to load \(line 1\): ModuleNotFoundError"),
      "returns_none": ("def get_config():\n  return None\n", "returned None"),
  }
  cases = [file_case("config", fault, "config.py", data, command, problem)
           for fault, (data, problem) in faults.items()]

  def missing(inputs: Inputs) -> tuple[str, Command]:
    return str(inputs.folder / "no.py"), command(inputs, str(inputs.folder / "no.py"))

  def override(flag: str, problem: str) -> Case:
    field = flag.split("=")[0]
    return Case("override", flag, lambda inputs: (field.lstrip("-"), (
        "attack.sample", ["--config.generator=images:x", flag])), problem)

  return cases + [
      Case("config", "missing", missing, "no such file"),
      override("--config.num=abc", "invalid literal for int"),
      override("--config.num=1e999", "invalid literal for int"),
      override("--config.num_samples=3", "unknown config field"),
      override("--config.num=-2", "must be positive"),
      override("--config.indices=1,x", "not a comma-separated list"),
      override("--config.generator=nowhere:x", "is not KIND:PATH"),
      Case("override", "--config.sample_detector_size=-32", lambda inputs: (
          "sample_detector_size", embed_photos(inputs.photos("x.png", b"")[0], inputs.matcher,
                                               "--config.align=detect",
                                               "--config.detector_onnx=yunet.onnx",
                                               "--config.sample_detector_size=-32")),
           "must be 0 \\(auto\\) or a positive multiple of 32"),
  ]


def onnx_cases() -> list[Case]:
  generator = lambda _, path: sample(f"onnx:{path}")

  def matcher(inputs: Inputs, path: str) -> Command:
    folder, _ = inputs.photos("good2.png", png(images(1, 16, seed=1)[0]))
    return embed_photos(folder, path)

  def detector(inputs: Inputs, path: str) -> Command:
    folder, _ = inputs.photos("good2.png", png(images(1, 16, seed=1)[0]))
    return embed_photos(folder, inputs.matcher, "--config.align=detect",
                        f"--config.detector_onnx={path}")

  yunet = lambda _: pathlib.Path(assets.yunet_path()).read_bytes()
  yunet_half = lambda inputs: yunet(inputs)[:len(yunet(inputs)) // 2]
  faults = [
      ("generator", "empty", b"", "the file is empty"),
      ("generator", "truncated_at_1/2", tiny_generator()[:len(tiny_generator()) // 2],
       "truncated"),
      ("generator", "random_bytes", random_bytes(), "not an ONNX"),
      ("generator", "other_kind:matcher", tiny_matcher(), "is not one square RGB image"),
      ("generator", "other_kind:detector", yunet, "one latent input and one image output"),
      ("generator", "other_kind:not_square", tiny_generator(16, 8),
       "is not one square RGB image"),
      ("generator", "hostile:external_data_outside_folder",
       external_data("../../../../etc/passwd"), "external data"),
      ("generator", "hostile:external_data_absolute", external_data("/etc/passwd"),
       "external data"),
      ("matcher", "empty", b"", "the file is empty"),
      ("matcher", "truncated_at_1/2", tiny_matcher()[:len(tiny_matcher()) // 2], "truncated"),
      ("matcher", "other_kind:detector", yunet, "a face matcher has one image input"),
      ("matcher", "other_kind:generator", tiny_generator(), "is not a square RGB image batch"),
      ("matcher", "random_bytes", random_bytes(), "not an ONNX"),
      ("detector", "empty", b"", "the file is empty"),
      ("detector", "truncated_at_1/2", yunet_half, "truncated"),
      ("detector", "random_bytes", random_bytes(), "not an ONNX"),
      ("detector", "other_kind:matcher", tiny_matcher(), "input_shapes names|not a YuNet graph"),
  ]
  commands = {"generator": generator, "matcher": matcher, "detector": detector}
  return [file_case(f"onnx:{role}", fault, "model.onnx", data, commands[role], problem)
          for role, fault, data, problem in faults]


def checkpoint_cases() -> list[Case]:
  """A trained GAN's newest checkpoint damaged (tests/test_hardening.py tries the library)."""
  def damaged(fault: str, change: Callable[[str], None]) -> Case:
    def make(inputs: Inputs) -> tuple[str, Command]:
      run = inputs.folder / "gan"
      shutil.copytree(inputs.models[0], run)
      step = max((p for p in (run / "checkpoints").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
      files = [p for p in step.rglob("*") if p.is_file() and p.name != CHECKSUMS]
      change(str(max(files, key=lambda p: p.stat().st_size)))
      return str(run), sample(f"gmia:{run}")
    return Case("checkpoint", fault, make, r"checkpoint step \d+ in .* is corrupt|missing")

  def truncate(path: str) -> None:
    with open(path, "r+b") as handle:
      handle.truncate(os.path.getsize(path) // 2)

  def flip(path: str) -> None:
    data = bytearray(pathlib.Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    pathlib.Path(path).write_bytes(bytes(data))

  return [damaged("emptied_file", lambda p: pathlib.Path(p).write_bytes(b"")),
          damaged("truncated", truncate),
          damaged("random_bytes", lambda p: pathlib.Path(p).write_bytes(
              random_bytes(os.path.getsize(p)))),
          damaged("flipped_byte", flip), damaged("deleted_file", os.remove)]


CASES = (pickle_cases() + images_cases() + photo_cases() + split_cases() + config_cases()
         + onnx_cases() + checkpoint_cases())


# ---------------------------------------------------------------- the checks

def snapshot(root: pathlib.Path, skip: pathlib.Path) -> dict[str, tuple[int, int]]:
  """{path: (size, mtime_ns)} of everything under `root` but `skip`."""
  found = {}
  for folder, subfolders, names in os.walk(root):
    subfolders[:] = [name for name in subfolders if pathlib.Path(folder, name) != skip]
    for name in names + subfolders:
      stat = os.lstat(os.path.join(folder, name))
      found[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
  return found


def run_case(server: Server, case: Case, root: pathlib.Path, request) -> tuple[str, Outcome,
                                                                                pathlib.Path]:
  """Builds the case's files under root/case/inputs and runs its command in root/case/cwd with
  the workdir root/case/work; nothing else under root/case may change."""
  folder = root / "case"
  for name in ("inputs", "cwd"):
    (folder / name).mkdir(parents=True)
  named, (module, args) = case.make(Inputs(folder / "inputs", request))
  work = folder / "work"
  before = snapshot(folder, work)
  outcome = server.run(module, [f"--workdir={work}", *args], folder / "cwd", out=root)
  assert snapshot(folder, work) == before, "the command changed files outside its workdir"
  return named, outcome, work


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}-{c.fault}" for c in CASES])
def test_a_bad_file_is_refused_in_a_few_lines(case, server, tmp_path, request):
  named, outcome, work = run_case(server, case, tmp_path, request)
  lines = outcome.stderr.strip().splitlines()
  assert len(lines) <= MAX_STDERR_LINES and "Traceback" not in outcome.stderr, outcome.stderr
  assert named in outcome.stderr and re.search(case.problem, outcome.stderr), outcome.stderr
  assert outcome.growth < MEMORY_BOUND, f"peak RSS {outcome.growth >> 20} MiB above the start"
  if case.skipped:
    assert outcome.status == 0, outcome.stderr
    warned = [line for line in lines if named in line]
    assert warned and warned[0].startswith("W"), outcome.stderr
    assert named in (work / "skipped.csv").read_text()
    left = [p for p in os.listdir(work) if any(m in p for m in workdir.TEMPORARY_MARKS)]
    assert not left
  else:
    assert outcome.status == 1, (outcome.status, outcome.stderr)
    assert not work.exists() or os.listdir(work) == [workdir.LOCK_FILE], os.listdir(work)


def test_the_server_runs_a_command_as_python_m_does(server, tmp_path, request):
  """One refusal and one skip run both ways: the same exit status and stderr (times aside)."""
  chosen = [c for c in CASES if (c.kind, c.fault) in {
      ("pkl", "hostile:stride_0_tensor_of_1GiB"), ("photos", "random_bytes")}]
  for case in chosen:
    root = tmp_path / case.kind
    named, forked, work = run_case(server, case, root, request)
    shutil.rmtree(work)
    module, args = case.make(Inputs(root / "case" / "inputs", request))[1]
    direct = subprocess.run([sys.executable, "-m", module, f"--workdir={work}", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    clean = lambda text: re.sub(r"^([IWEF])\d{4} [\d:.]+ +\d+ ", r"\1 ", text, flags=re.M)
    assert direct.returncode == forked.status
    assert clean(direct.stderr) == clean(forked.stderr)


def test_the_memory_check_sees_a_reader_that_allocates_what_a_file_declares(server, tmp_path):
  """The bound can fail: the stride-0 tensor of 16384 x 16384 over one number, copied as the
  pickle reader once copied it, run as a command, grows the peak RSS by its 1 GiB."""
  (tmp_path / "naive_read.py").write_text(
      "import numpy as np\n"
      "view = np.lib.stride_tricks.as_strided(np.ones(1, np.float32), (16384, 16384), (0, 0))\n"
      "np.array(view)\n")
  outcome = server.run("naive_read", [], tmp_path, sys_path=[str(tmp_path)])
  assert outcome.status == 0 and outcome.growth > 3 * MEMORY_BOUND, outcome


# ---------------------------------------------------------------- detection that fits the samples

def test_automatic_detection_settings_follow_the_samples_side():
  sides = np.array([16, 32, 48, 64, 100, 128, 200, 256, 1024])
  # The smallest multiple of 32 at least 2.5x the side, from 96 (YuNet's top_k candidates need
  # that many anchors) to 640, and 0.6 below 256 px.
  want = np.clip(np.ceil(2.5 * sides / 32) * 32, 96, 640)
  assert [embedder.auto_detector_size(int(s)) for s in sides] == want.tolist()
  assert [embedder.auto_detect_score(int(s)) for s in sides] == [0.6] * 7 + [0.9] * 2


NUM_DCGAN = 16


@pytest.fixture(scope="module")
def dcgan_attack(tmp_path_factory):
  """The membership command on a folder of the 64 px DCGAN's samples (tests/dcgan.py), SFace
  behind YuNet, real photos as the targets and the population (tests/test_real_generator.py)."""
  root = tmp_path_factory.mktemp("dcgan_attack")
  config = ml_collections.ConfigDict({**sources.config_fields(),
                                      "generator": f"onnx:{dcgan.onnx_path(str(root))}"})
  samples = sources.open_source(config).sample(np.arange(NUM_DCGAN), parallel.make_mesh())
  folder = root / "samples"
  folder.mkdir()
  for i, image in enumerate(viz.to_uint8(np.asarray(samples))):
    viz.save_png(str(folder / f"{i:05d}.png"), image)
  for person, path in assets.photos():
    group = "targets" if person in ("macron", "ardern") else "population"
    (root / group / person).mkdir(parents=True, exist_ok=True)
    os.symlink(path, root / group / person / os.path.basename(path))
  return "attack.membership", [
      f"--config.generator=images:{folder}", f"--config.matcher.path={assets.sface_path()}",
      "--config.matcher.preset=sface", "--config.align=detect",
      f"--config.detector_onnx={assets.yunet_path()}", f"--config.targets_dir={root / 'targets'}",
      f"--config.population_dir={root / 'population'}", f"--config.num_samples={NUM_DCGAN}",
      f"--config.chunk_size={NUM_DCGAN}", "--config.topk=2", "--config.bootstrap_resamples=10"]


def test_default_detection_finds_the_faces_of_small_samples(server, dcgan_attack, tmp_path):
  module, args = dcgan_attack
  work = tmp_path / "work"
  outcome = server.run(module, [f"--workdir={work}", *args], tmp_path)
  assert outcome.status == 0, outcome.stderr
  report = json.loads((work / "report.json").read_text())
  # Measured on 300 samples: 298 found at 160 px and 0.6, none at 640 px and 0.9.
  assert report["usable_samples"] >= NUM_DCGAN - 1, report["usable_samples"]


def test_no_usable_face_says_what_the_detector_saw_and_what_to_set(server, dcgan_attack,
                                                                   tmp_path):
  """README's former defaults (640 px, 0.9) find no face in 64 px samples: the error names the
  samples tried, the best score, the face sizes and the setting; the setting it names works."""
  module, args = dcgan_attack
  forced = [*args, "--config.sample_detector_size=640", "--config.detect_score=0.9"]
  outcome = server.run(module, [f"--workdir={tmp_path / 'forced'}", *forced], tmp_path)
  lines = outcome.stderr.strip().splitlines()
  assert outcome.status == 1 and "Traceback" not in outcome.stderr, outcome.stderr
  assert f"none of the {NUM_DCGAN} samples had a usable face" in lines[-1]
  seen = re.search(r"YuNet at 640 px .* on (\d+) samples of 64 px: best face score (0\.\d+) "
                   r"against a threshold of 0\.9 .*faces of (\d+)-(\d+) px.*: set "
                   r"--config\.detect_score=([\d.]+) or lower", outcome.stderr)
  assert seen, outcome.stderr
  assert int(seen[1]) == NUM_DCGAN and 0.5 < float(seen[2]) < 0.9
  assert 20 <= int(seen[3]) <= int(seen[4]) <= 64  # The DCGAN's faces: about 44 px of 64.
  suggested = server.run(module, [f"--workdir={tmp_path / 'suggested'}", *forced,
                                  f"--config.detect_score={seen[5]}"], tmp_path)
  assert suggested.status == 0, suggested.stderr
  usable = json.loads((tmp_path / "suggested" / "report.json").read_text())["usable_samples"]
  assert usable >= 1
