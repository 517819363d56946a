"""NVIDIA stylegan2-ada-pytorch network pickles read as plain data: no torch, nothing executed.

Unpickling calls whatever importable function the file names, so `pickle.load` of a downloaded
network runs code chosen by whoever made the file (and NVIDIA's pickles carry their networks'
Python source, which their loader `exec`s). This reader resolves only an allow-list of globals,
each of which builds data:
- torch's tensor and storage rebuilders: tensors come back as numpy arrays, their storages parsed
  from torch's legacy serialisation format (a header, the storage's dtype and size, raw bytes);
- `torch_utils.persistence._reconstruct_persistent_obj`: each persistent module becomes a
  `TorchModule` record of its parameters, buffers, submodules and attributes; the module source
  embedded next to it is dropped unread;
- numpy arrays (of numbers), scalars and dtypes; `collections.OrderedDict`; `dnnlib.util.EasyDict`
  (as a dict); the builtins set, frozenset, bytearray and complex.
Any other global is refused before anything is called, with an error naming it. Pickles of NVIDIA's
TensorFlow code (`dnnlib.tflib`) are named as such. `read_torch_zip` reads torch.save's zip
archives (state dicts of other people's networks) with the same allow-list.

Sizes a file declares are checked against the data it holds before anything is allocated: a
tensor never has more elements than its storage (a stride-0 view of one number declaring 16384 x
16384 is refused, not materialised), a numpy array's state must hold exactly its shape's bytes,
and `bytearray(n)` of a number is refused above MAX_BYTEARRAY. A file that still asks for more
memory than there is ends in a PickleError naming it.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import zipfile
from typing import Any

import numpy as np

from gmia.cli import one_line

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's legacy (non-zip) format.
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_INTERNALS = ("training", "_parameters", "_buffers", "_modules", "_init_args",
                    "_init_kwargs")
# bytearray(n) of a number allocates n zero bytes that the file does not hold; NVIDIA's pickles
# never call it so (bytearrays come as bytearray(data, encoding)).
MAX_BYTEARRAY = 1 << 20


class PickleError(ValueError):
  """A file this reader refuses or cannot read; the message is one line naming the cause."""


@dataclasses.dataclass
class TorchModule:
  """A pickled persistent torch.nn.Module as data.

  tensors: parameters and buffers by name, numpy arrays in PyTorch's layout.
  modules: submodules by name. attributes: the module's other public fields (z_dim,
  conv_clamp, ...). init_kwargs: the keyword arguments it was constructed with.
  """
  class_name: str
  tensors: dict[str, np.ndarray]
  modules: dict[str, TorchModule]
  attributes: dict[str, Any]
  init_kwargs: dict[str, Any]

  def named_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
    """Every tensor of the module tree by dotted path ('mapping.fc0.weight')."""
    found = {prefix + name: value for name, value in self.tensors.items()}
    for name, module in self.modules.items():
      found.update(module.named_tensors(f"{prefix}{name}."))
    return found

  def named_modules(self, prefix: str = "") -> dict[str, TorchModule]:
    """This module ('' or prefix) and every submodule by dotted path."""
    found = {prefix.rstrip("."): self}
    for name, module in self.modules.items():
      found.update(module.named_modules(f"{prefix}{name}."))
    return found


class _EasyDict(dict):
  """dnnlib.util.EasyDict's data: a dict."""


@dataclasses.dataclass
class _Storage:
  array: np.ndarray


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: a copy of the strided view of `storage`."""
  if not isinstance(storage, _Storage):
    raise PickleError(f"tensor over a {type(storage).__name__}, not a tensor storage")
  data = storage.array
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if (len(size) != len(stride) or min(size + stride, default=0) < 0 or offset < 0
      or (all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= data.size)):
    raise PickleError(f"tensor of size {size}, stride {stride} and offset {offset} does not fit "
                      f"its storage of {data.size} elements")
  # Checked before the copy below: a view repeating a few stored numbers (stride 0) can declare
  # any size. A network's tensors never hold more elements than their storage.
  if math.prod(size) > data.size - offset:
    raise PickleError(f"tensor of size {size} declares {math.prod(size)} elements, its storage "
                      f"holds {data.size - offset} from offset {offset}")
  if not all(size):
    return np.zeros(size, data.dtype)
  view = np.lib.stride_tricks.as_strided(data[offset:], size,
                                         [s * data.itemsize for s in stride], writeable=False)
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_) -> np.ndarray:
  """torch._utils._rebuild_parameter(_with_state): the parameter's tensor."""
  return data


class _StorageUnpickler(pickle.Unpickler):
  """The object part of torch's legacy format: storage type globals and storage ids only."""

  def __init__(self, file: io.BytesIO, storages: dict[str, tuple[np.dtype, int]]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in STORAGE_DTYPES:
      return np.dtype(STORAGE_DTYPES[name])
    raise PickleError(f"tensor storage of unsupported type {module}.{name}")

  def persistent_load(self, pid: Any) -> str:
    if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
        or not isinstance(pid[1], np.dtype)):
      raise PickleError(f"unexpected tensor storage record {pid!r:.80}")
    if len(pid) > 5 and pid[5] is not None:
      raise PickleError("tensor storage views are not supported")
    self.storages[str(pid[2])] = (pid[1], int(pid[4]))
    return str(pid[2])


class _PlainUnpickler(pickle.Unpickler):
  """Header records of torch's legacy format: no globals at all."""

  def find_class(self, module: str, name: str) -> Any:
    raise PickleError(f"global {module}.{name} in a tensor storage header")


def _load_storage(data: bytes) -> _Storage:
  """torch.storage._load_from_bytes: a storage saved by torch.save in the legacy format."""
  f = io.BytesIO(data)
  if _PlainUnpickler(f).load() != LEGACY_MAGIC:
    raise PickleError("tensor storage without torch's serialisation magic number")
  if _PlainUnpickler(f).load() != LEGACY_PROTOCOL:
    raise PickleError("tensor storage of an unknown torch serialisation protocol")
  if not _PlainUnpickler(f).load().get("little_endian", False):
    raise PickleError("big-endian tensor storage")
  storages: dict[str, tuple[np.dtype, int]] = {}
  key = _StorageUnpickler(f, storages).load()
  keys = _PlainUnpickler(f).load()
  arrays = {}
  for k in keys:
    dtype, numel = storages[k]
    if int.from_bytes(f.read(8), "little") != numel:
      raise PickleError(f"tensor storage {k} holds another size than its record says")
    raw = f.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise PickleError(f"tensor storage {k} is truncated")
    arrays[k] = np.frombuffer(raw, dtype)
  return _Storage(arrays[key])


def _persistent_module(meta: dict) -> TorchModule:
  """torch_utils.persistence._reconstruct_persistent_obj: the module's state as a record."""
  if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(
      meta.get("state"), dict):
    raise PickleError("persistent object that is not a class instance with a state dict")
  state = meta["state"]
  tensors = {}
  for group in ("_parameters", "_buffers"):
    tensors.update({k: v for k, v in (state.get(group) or {}).items() if v is not None})
  modules = {k: v for k, v in (state.get("_modules") or {}).items() if v is not None}
  bad = [k for k, v in list(tensors.items()) + list(modules.items())
         if not isinstance(v, (np.ndarray, TorchModule))]
  if bad:
    raise PickleError(f"{meta.get('class_name')}.{bad[0]} is neither a tensor nor a persistent "
                      "module")
  attributes = {k: v for k, v in state.items()
                if not k.startswith("_") and k not in _TORCH_INTERNALS}
  return TorchModule(str(meta.get("class_name")), tensors, modules, attributes,
                     dict(state.get("_init_kwargs") or {}))


class _NdarrayName:
  """`numpy.ndarray` as a pickle names it: the type `_reconstruct_array` is told to build.
  Calling it, which would allocate an array of any size uninitialised, fails."""


class _Array(np.ndarray):
  """An array numpy's pickle protocol builds, whose state is checked before numpy reads it:
  numbers only (numpy reads an object array's items from a list whose length it trusts, and
  crashes on a shorter one) and exactly the bytes its shape needs."""

  def __setstate__(self, state: tuple) -> None:
    shape, dtype, data = state[-4], state[-3], state[-1]
    if (not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.hasobject
        or dtype.fields is not None or dtype.subdtype is not None):
      raise PickleError(f"numpy array of dtype {dtype!r:.60}: only arrays of numbers are read")
    if (not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape)
        or not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize):
      raise PickleError(f"numpy array of shape {shape!r:.60} and dtype {dtype} with "
                        f"{len(data) if isinstance(data, bytes) else 'no'} bytes of data")
    super().__setstate__(state)


def _reconstruct_array(subtype: Any, *_) -> np.ndarray:
  """numpy.core.multiarray._reconstruct: an empty array that the pickle's state fills."""
  if subtype is not _NdarrayName:
    raise PickleError(f"numpy array of type {subtype!r:.60}")
  return np.ndarray.__new__(_Array, (0,), np.uint8)


def _bytearray(*args: Any) -> bytearray:
  """builtins.bytearray: of the file's bytes, or of at most MAX_BYTEARRAY zeros."""
  if args and isinstance(args[0], int) and not 0 <= args[0] <= MAX_BYTEARRAY:
    raise PickleError(f"bytearray({args[0]}) asks for {args[0]} bytes the file does not hold "
                      f"(at most {MAX_BYTEARRAY} are read)")
  return bytearray(*args)


_ALLOWED = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.storage._load_from_bytes": _load_storage,
    "torch_utils.persistence._reconstruct_persistent_obj": _persistent_module,
    "collections.OrderedDict": collections.OrderedDict,
    "dnnlib.util.EasyDict": _EasyDict,
    "dnnlib.EasyDict": _EasyDict,
    "numpy.ndarray": _NdarrayName,
    "numpy.dtype": np.dtype,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": _bytearray,
    "builtins.complex": complex,
}
for _numpy in ("numpy.core", "numpy._core"):
  _ALLOWED[f"{_numpy}.multiarray._reconstruct"] = _reconstruct_array
  _ALLOWED[f"{_numpy}.multiarray.scalar"] = np.float64(0).__reduce__()[0]


class _NetworkUnpickler(pickle.Unpickler):
  """Resolves only the allow-listed globals; there are no persistent ids in these files."""

  def find_class(self, module: str, name: str) -> Any:
    found = _ALLOWED.get(f"{module}.{name}")
    if found is not None:
      return found
    if module.startswith("dnnlib.tflib"):
      raise PickleError(f"a pickle of NVIDIA's TensorFlow StyleGAN/StyleGAN2 code ({module}."
                        f"{name}) is not supported; convert it with stylegan2-ada-pytorch's "
                        "legacy.py into a PyTorch pickle")
    raise PickleError(f"global {module}.{name} is not on the allow-list of stylegan2-ada-pytorch "
                      "pickles; refusing to load (it could run code)")


def read_pickle(path: str) -> Any:
  """The unpickled content of `path` (for NVIDIA's snapshots a dict with 'G', 'D', 'G_ema',
  'augment_pipe', 'training_set_kwargs'), persistent modules as `TorchModule`s.

  Raises PickleError (one line, naming the file) for refused globals and unreadable files.
  """
  with open(path, "rb") as f:
    data = f.read()
  if not data:
    raise PickleError(f"{path}: the file is empty")
  if data[:4] == b"PK\x03\x04":
    raise PickleError(f"{path}: a zip archive (torch.save's format), not a stylegan2-ada-pytorch "
                      "network pickle")
  try:
    return _NetworkUnpickler(io.BytesIO(data)).load()
  except PickleError as e:
    raise PickleError(f"{path}: {e}") from None
  except MemoryError:
    raise PickleError(f"{path}: asks for more memory than there is; not a network pickle "
                      "gmia can read") from None
  except Exception as e:  # pylint: disable=broad-except
    # Only the allow-listed builders ran: whatever they or the unpickler raised is the file's.
    raise PickleError(f"{path}: not a readable network pickle ({one_line(e, True)})") from None


class _ZipUnpickler(_NetworkUnpickler):
  """data.pkl of a torch.save zip archive: storages are the archive's data/<key> members."""

  def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self.archive, self.prefix = archive, prefix

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in STORAGE_DTYPES:
      return np.dtype(STORAGE_DTYPES[name])
    return super().find_class(module, name)

  def persistent_load(self, pid: Any) -> _Storage:
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
        or not isinstance(pid[1], np.dtype)):
      raise PickleError(f"unexpected tensor storage record {pid!r:.80}")
    _, dtype, key, _, numel = pid
    raw = self.archive.read(f"{self.prefix}data/{key}")
    if len(raw) < int(numel) * dtype.itemsize:
      raise PickleError(f"tensor storage {key} is truncated")
    return _Storage(np.frombuffer(raw, dtype, count=int(numel)))


def read_torch_zip(path: str) -> Any:
  """The unpickled content of a torch.save zip archive (e.g. a state dict), tensors as numpy
  arrays; globals resolved from the allow-list only. Raises PickleError naming the file."""
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
      if len(pickles) != 1:
        raise PickleError(f"not a torch.save archive: {len(pickles)} data.pkl members")
      prefix = pickles[0][:-len("data.pkl")]
      order = archive.read(prefix + "byteorder").decode() if (
          prefix + "byteorder") in archive.namelist() else "little"
      if order.strip() != "little":
        raise PickleError(f"tensors stored {order.strip()}-endian")
      return _ZipUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix).load()
  except PickleError as e:
    raise PickleError(f"{path}: {e}") from None
  except MemoryError:
    raise PickleError(f"{path}: asks for more memory than there is") from None
  except Exception as e:  # pylint: disable=broad-except
    raise PickleError(f"{path}: not a readable torch.save archive ({one_line(e, True)})") from None
