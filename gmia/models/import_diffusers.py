"""Released diffusion models: a diffusers `UNet2DModel` folder as a gmia U-Net and its schedule.

What loads: an unconditional pixel-space `UNet2DModel` (the DDPM CIFAR-10, CelebA-HQ, church and
bedroom checkpoints, google/ddpm-ema-*, ...): its `config.json` and its weights,
`diffusion_pytorch_model.safetensors` (read by safetensors' numpy API, no torch) or the older
`diffusion_pytorch_model.bin` (a torch.save archive read by gmia.models.nvidia_pickle's
restricted reader: nothing in the file is executed). The path is the U-Net's folder or a
pipeline's folder holding `unet/`. The schedule comes from `scheduler_config.json` beside the
U-Net, or from the pipeline's `scheduler/` folder; a folder written by `UNet2DModel.
save_pretrained` alone has none and samples on DDPM's defaults (1000 linear steps, 1e-4 to 0.02).

Refused with a one-line ValueError naming the cause: latent pipelines (a `vae/` folder, e.g.
LDM, Stable Diffusion), conditional models (UNet2DConditionModel, class embeddings), outputs that
are not images of the input's channels (a learned variance), block types other than DownBlock2D,
AttnDownBlock2D, UpBlock2D, AttnUpBlock2D, Fourier or learned time embeddings; and weights that
do not fit (an unreadable, truncated or corrupt file, a missing, extra or misshapen tensor),
naming the file.

Names map 1:1 (gmia.models.unet): `down_blocks.0.resnets.1.conv1.weight` ->
params/down_blocks_0/resnets_1/conv1/kernel; conv weights [out, in, kh, kw] -> [kh, kw, in, out],
linear weights [out, in] -> [in, out], group norm weights -> scale. The attention names of early
diffusers checkpoints (query, key, value, proj_attn) are read as to_q, to_k, to_v, to_out.0, as
diffusers' own loader does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from gmia.models import noise_schedule
from gmia.models import nvidia_pickle
from gmia.models.unet import UNet

CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
SAFETENSORS = "diffusion_pytorch_model.safetensors"
TORCH_BIN = "diffusion_pytorch_model.bin"
# UNet2DModel's config fields that gmia's UNet has, with diffusers' defaults for absent ones.
UNET_FIELDS = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (224, 448, 672, 896),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2, "attention_head_dim": 8, "norm_num_groups": 32,
    "attn_norm_num_groups": None, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
    "time_embedding_dim": None, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
    "add_attention": True, "downsample_padding": 1, "resnet_time_scale_shift": "default",
    "center_input_sample": False,
}
# Fields whose other values gmia does not implement: (default, what the other values are).
REFUSED = {
    "time_embedding_type": ("positional", "time embedding"),
    "class_embed_type": (None, "class embedding (a conditional model)"),
    "num_class_embeds": (None, "class embeddings (a conditional model)"),
    "act_fn": ("silu", "activation"),
    "downsample_type": ("conv", "downsampling"),
    "upsample_type": ("conv", "upsampling"),
}
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as handle:
      settings = json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(f"{path}: not a readable JSON file ({error})") from None
  if not isinstance(settings, dict):
    raise ValueError(f"{path}: not a JSON object")
  return settings


def find_folders(path: str) -> tuple[str, str | None]:
  """(the U-Net's folder, its scheduler_config.json or None) for a U-Net or pipeline folder."""
  if not os.path.isdir(path):
    raise ValueError(f"{path}: not a folder (a diffusers UNet2DModel or pipeline folder)")
  for root in (path, os.path.dirname(os.path.abspath(path))):
    if os.path.isdir(os.path.join(root, "vae")):
      raise ValueError(f"{root} is a latent diffusion pipeline (it has a vae/ folder); only "
                       "pixel-space UNet2DModel pipelines are supported")
  unet_dir = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
  if not os.path.exists(os.path.join(unet_dir, CONFIG)):
    raise ValueError(f"{unet_dir}: no {CONFIG}; not a diffusers UNet2DModel folder")
  candidates = [os.path.join(unet_dir, SCHEDULER_CONFIG),
                os.path.join(os.path.dirname(os.path.abspath(unet_dir)), "scheduler",
                             SCHEDULER_CONFIG)]
  return unet_dir, next((c for c in candidates if os.path.exists(c)), None)


def unet_settings(config: dict[str, Any], where: str) -> dict[str, Any]:
  """gmia UNet keyword arguments for a UNet2DModel config.json; ValueError for what is refused."""
  name = config.get("_class_name", "UNet2DModel")
  if name != "UNet2DModel":
    kind = " (a conditional model)" if "Condition" in name else ""
    raise ValueError(f"{where}: {name}{kind} is not supported; only unconditional pixel-space "
                     "UNet2DModel")
  for field, (default, what) in REFUSED.items():
    if config.get(field, default) != default:
      raise ValueError(f"{where}: {what} {field}={config[field]!r} is not supported (only "
                       f"{default!r})")
  if config.get("in_channels", 3) != config.get("out_channels", 3):
    raise ValueError(f"{where}: in_channels {config.get('in_channels', 3)} != out_channels "
                     f"{config.get('out_channels', 3)} (a learned variance or a latent model); "
                     "only networks predicting noise, x0 or v of their input are supported")
  settings = {field: config.get(field, default) for field, default in UNET_FIELDS.items()}
  for field in ("block_out_channels", "down_block_types", "up_block_types"):
    settings[field] = tuple(settings[field])
  try:
    UNet(**settings).check()
  except ValueError as error:
    raise ValueError(f"{where}: {error}") from None
  return settings


def _read_weights(unet_dir: str) -> tuple[dict[str, np.ndarray], str]:
  """{diffusers name: array} and the file they came from."""
  path = os.path.join(unet_dir, SAFETENSORS)
  if os.path.exists(path):
    try:
      return safetensors.numpy.load_file(path), path
    except (safetensors.SafetensorError, OSError) as error:
      first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
      raise ValueError(f"{path}: not a readable safetensors file ({first_line})") from None
  path = os.path.join(unet_dir, TORCH_BIN)
  if os.path.exists(path):
    weights = nvidia_pickle.read_torch_zip(path)
    if not isinstance(weights, dict) or not all(isinstance(v, np.ndarray)
                                                for v in weights.values()):
      raise ValueError(f"{path}: not a state dict of tensors")
    return dict(weights), path
  raise ValueError(f"{unet_dir}: no {SAFETENSORS} or {TORCH_BIN}")


def _gmia_path(name: str) -> tuple[str, ...]:
  """diffusers' dotted name -> the path in gmia's params ('down_blocks.0.resnets.1.conv1.weight'
  -> down_blocks_0 / resnets_1 / conv1 / weight)."""
  parts = name.split(".")
  if len(parts) >= 2 and parts[-2] in _DEPRECATED_ATTENTION:
    parts = parts[:-2] + _DEPRECATED_ATTENTION[parts[-2]].split(".") + parts[-1:]
  path: list[str] = []
  for part in parts:
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return tuple(path)


def _gmia_leaf(path: tuple[str, ...], value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  """The parameter's gmia name and layout."""
  value = np.asarray(value, np.float32)
  *module, leaf = path
  if leaf == "weight":
    if value.ndim == 4:
      return (*module, "kernel"), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
      return (*module, "kernel"), value.T
    return (*module, "scale"), value
  return path, value


def params_from_weights(weights: dict[str, np.ndarray], expected: dict[tuple[str, ...], Any],
                        where: str) -> dict[str, Any]:
  """gmia params (nested dict) from diffusers' tensors, every name and shape checked against
  `expected` ({path: ShapeDtypeStruct} of the built network)."""
  flat = {}
  for name, value in weights.items():
    path, array = _gmia_leaf(_gmia_path(name), value)
    if path not in expected:
      raise ValueError(f"{where}: tensor {name} {list(np.shape(value))} has no place in the "
                       "U-Net that config.json describes")
    if array.shape != expected[path].shape:
      needed = expected[path].shape
      needed = needed[::-1][:2] + needed[:2] if len(needed) == 4 else needed[::-1]
      raise ValueError(f"{where}: tensor {name} has shape {list(np.shape(value))}; the U-Net "
                       f"that config.json describes needs {list(needed)}")
    flat[path] = array
  missing = sorted(".".join(p) for p in expected.keys() - flat.keys())
  if missing:
    raise ValueError(f"{where}: {len(missing)} tensors of the U-Net are missing, e.g. {missing[0]}")
  return traverse_util.unflatten_dict(flat)


def load_unet(path: str) -> tuple[UNet, dict[str, Any], dict[str, Any]]:
  """(unet, variables, info) of a diffusers UNet2DModel folder or a pipeline folder.

  `unet.apply(variables, x, t)`: images f32[B, H, W, C] and timesteps i32[B] -> the network's
  output f32[B, H, W, C] (diffusers' `UNet2DModel(x, t).sample`, NHWC).
  info: {"schedule": gmia.models.noise_schedule.Schedule (the scheduler's settings, DDPM's defaults
  without one), "resolution": config.json's sample_size (or None), "channels", "config": the
  U-Net's config.json, "scheduler_config": the path read or None, "weights": the weights file}.
  """
  unet_dir, scheduler_path = find_folders(path)
  config_path = os.path.join(unet_dir, CONFIG)
  config = _read_json(config_path)
  unet = UNet(**unet_settings(config, config_path))
  weights, weights_path = _read_weights(unet_dir)
  size = config.get("sample_size") or 32
  size = size[0] if isinstance(size, (list, tuple)) else size
  factor = 2 ** (len(unet.block_out_channels) - 1)
  side = max(size, factor)
  abstract = jax.eval_shape(lambda: unet.init(jax.random.key(0), jnp.zeros(
      (1, side, side, unet.in_channels)), jnp.zeros((1,), jnp.int32)))
  expected = traverse_util.flatten_dict(abstract["params"])
  params = params_from_weights(weights, expected, weights_path)
  if scheduler_path is None:
    schedule = noise_schedule.Schedule(noise_schedule.make_betas("linear"))
  else:
    schedule = noise_schedule.from_scheduler_config(_read_json(scheduler_path),
                                                        scheduler_path)
  sample_size = config.get("sample_size")
  info = {"schedule": schedule,
          "resolution": sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size,
          "channels": unet.in_channels, "config": config, "scheduler_config": scheduler_path,
          "weights": weights_path}
  return unet, {"params": params}, info
