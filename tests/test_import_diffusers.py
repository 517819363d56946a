"""diffusers UNet2DModel folders: the import against diffusers' own outputs, and its refusals.

Fixtures (tests/fixtures/diffusers/): three random `UNet2DModel`s built with diffusers 0.42.1
(torch 2.13, CPU), every parameter then shifted by N(0, 0.1^2) so that zero-initialised layers
(conv_out, the attention output projections) count, written by `save_pretrained`:
- attn: block_out_channels (8, 16, 16), DownBlock2D / AttnDownBlock2D / AttnDownBlock2D and
  AttnUpBlock2D / AttnUpBlock2D / UpBlock2D, layers_per_block 1, norm_num_groups 4,
  attention_head_dim 4 (several heads); safetensors, with a DDIMScheduler's
  scheduler_config.json beside it (beta 2e-4..0.03, "trailing" spacing).
- plain: (8, 16), DownBlock2D and UpBlock2D only, layers_per_block 2, norm_num_groups 2,
  flip_sin_to_cos false, freq_shift 1, downsample_padding 0, a mid block without attention,
  resnet_time_scale_shift "scale_shift", norm_eps 1e-6, mid_block_scale_factor 1.414,
  time_embedding_dim 24; safetensors, no scheduler (DDPM's defaults).
- legacy_pipeline: google/ddpm-cifar10-32's layout at widths (8, 8, 16) (attention_head_dim null:
  one head per block, downsample_padding 0, freq_shift 1) as a DDPMPipeline folder: unet/ with
  a torch.save `diffusion_pytorch_model.bin` whose attention tensors carry the early names
  (query, key, value, proj_attn), and scheduler/ (DDPMScheduler, squaredcos_cap_v2, 500 steps,
  no clipping). Its reference comes from diffusers' `from_pretrained` of that folder.
Each reference.npz holds x ~ N(0, 1) [3, 16, 16, 3] (NHWC), t = [0, 37, 999], out =
`model(x, t).sample` and out_t500 = `model(x[:1], 500).sample`, NCHW transposed to NHWC.
"""

import json
import os
import pickle
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from gmia.models import import_diffusers

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers")
TOLERANCE = 1e-4


def relative_error(got, want):
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name", ["attn", "plain", "legacy_pipeline"])
def test_outputs_match_diffusers(name):
  unet, variables, info = import_diffusers.load_unet(os.path.join(FIXTURES, name))
  ref = np.load(os.path.join(FIXTURES, name, "reference.npz"))
  apply = jax.jit(unet.apply)
  out = np.asarray(apply(variables, ref["x"], ref["t"].astype(np.int32)))
  assert out.shape == ref["out"].shape == (3, 16, 16, 3)
  assert relative_error(out, ref["out"]) < TOLERANCE
  out = np.asarray(apply(variables, ref["x"][:1], np.int32(500)))
  assert relative_error(out, ref["out_t500"]) < TOLERANCE
  assert info["resolution"] == 16 and info["channels"] == 3


def test_scheduler_settings_come_from_beside_the_unet_or_the_pipeline():
  _, _, attn = import_diffusers.load_unet(os.path.join(FIXTURES, "attn"))
  assert attn["schedule"].timestep_spacing == "trailing"
  np.testing.assert_array_equal(attn["schedule"].betas,
                                np.linspace(2e-4, 0.03, 1000, dtype=np.float32))
  _, _, plain = import_diffusers.load_unet(os.path.join(FIXTURES, "plain"))
  assert plain["scheduler_config"] is None and plain["schedule"].clip_sample
  np.testing.assert_array_equal(plain["schedule"].betas,
                                np.linspace(1e-4, 0.02, 1000, dtype=np.float32))
  for path in ("legacy_pipeline", "legacy_pipeline/unet"):
    _, _, legacy = import_diffusers.load_unet(os.path.join(FIXTURES, path))
    assert legacy["scheduler_config"].endswith("scheduler/scheduler_config.json")
    assert legacy["schedule"].num_train_timesteps == 500 and not legacy["schedule"].clip_sample
    assert legacy["weights"].endswith("diffusion_pytorch_model.bin")


def copy_of(name, tmp_path):
  folder = str(tmp_path / name)
  shutil.copytree(os.path.join(FIXTURES, name), folder)
  return folder


def rewrite_config(folder, **fields):
  path = os.path.join(folder, "config.json")
  with open(path) as handle:
    config = json.load(handle)
  config.update(fields)
  with open(path, "w") as handle:
    json.dump(config, handle)


def one_line_error(path, match):
  with pytest.raises(ValueError, match=match) as error:
    import_diffusers.load_unet(path)
  assert "\n" not in str(error.value)
  return str(error.value)


def test_corrupt_or_mismatched_safetensors_give_one_line_errors(tmp_path):
  folder = copy_of("plain", tmp_path)
  weights_path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
  data = open(weights_path, "rb").read()
  weights = safetensors.numpy.load_file(weights_path)
  cases = {
      "truncated": lambda: open(weights_path, "wb").write(data[:len(data) // 2]),
      "random": lambda: open(weights_path, "wb").write(
          np.random.default_rng(0).bytes(len(data))),
      "empty": lambda: open(weights_path, "wb").write(b""),
  }
  for name, corrupt in cases.items():
    corrupt()
    message = one_line_error(folder, "not a readable safetensors file")
    assert message.startswith(weights_path), (name, message)

  def save(tensors):
    safetensors.numpy.save_file(tensors, weights_path)

  save({k: v for k, v in weights.items() if k != "conv_out.bias"})
  one_line_error(folder, r"^.*safetensors: 1 tensors of the U-Net are missing, e.g. conv_out.bias")
  save({**weights, "conv_out.weight": weights["conv_out.weight"][:, :2]})
  one_line_error(folder, r"safetensors: tensor conv_out.weight has shape \[3, 2, 3, 3\]; the U-Net "
                 r"that config.json describes needs \[3, 8, 3, 3\]$")
  save({**weights, "extra.weight": np.zeros(3, np.float32)})
  one_line_error(folder, "safetensors: tensor extra.weight .* has no place in the U-Net")
  # Weights of another configuration: the config says wider blocks than the file holds.
  save(weights)
  rewrite_config(folder, block_out_channels=[8, 32])
  one_line_error(folder, "safetensors: tensor .* has shape .* needs")


def test_torch_archives_are_read_without_executing_anything(tmp_path):
  folder = copy_of("legacy_pipeline", tmp_path)
  path = os.path.join(folder, "unet", "diffusion_pytorch_model.bin")

  class Payload:
    def __reduce__(self):
      return (os.system, ("echo owned",))

  import zipfile
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"conv_in.weight": Payload()}))
  one_line_error(folder, "global posix.system is not on the allow-list")
  open(path, "wb").write(b"not a zip")
  one_line_error(folder, "not a readable torch.save archive")


@pytest.mark.parametrize("fields,match", [
    ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel \\(a conditional model\\)"),
    ({"num_class_embeds": 10}, "class embeddings .* num_class_embeds=10 is not supported"),
    ({"time_embedding_type": "fourier"}, "time embedding time_embedding_type='fourier'"),
    ({"out_channels": 6}, "in_channels 3 != out_channels 6"),
    ({"down_block_types": ["SkipDownBlock2D", "DownBlock2D"]},
     "block type 'SkipDownBlock2D' is not supported"),
    ({"up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
     "block type 'CrossAttnUpBlock2D' is not supported"),
    ({"downsample_type": "resnet"}, "downsampling downsample_type='resnet' is not supported"),
])
def test_unsupported_models_are_refused_by_name(fields, match, tmp_path):
  folder = copy_of("plain", tmp_path)
  rewrite_config(folder, **fields)
  message = one_line_error(folder, match)
  assert message.startswith(os.path.join(folder, "config.json"))


def test_latent_pipelines_and_missing_files_are_refused(tmp_path):
  folder = copy_of("legacy_pipeline", tmp_path)
  os.makedirs(os.path.join(folder, "vae"))
  one_line_error(folder, "latent diffusion pipeline \\(it has a vae/ folder\\)")
  one_line_error(os.path.join(folder, "unet"), "latent diffusion pipeline")
  one_line_error(str(tmp_path / "nowhere"), "not a folder")
  empty = tmp_path / "empty"
  empty.mkdir()
  one_line_error(str(empty), "no config.json; not a diffusers UNet2DModel folder")
  bare = copy_of("plain", tmp_path)
  os.remove(os.path.join(bare, "diffusion_pytorch_model.safetensors"))
  one_line_error(bare, "no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin")
  with open(os.path.join(copy_of("attn", tmp_path), "scheduler_config.json"), "w") as handle:
    json.dump({"_class_name": "EulerDiscreteScheduler"}, handle)
  one_line_error(str(tmp_path / "attn"), "scheduler 'EulerDiscreteScheduler' is not supported")
