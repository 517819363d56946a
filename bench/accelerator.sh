#!/usr/bin/env bash
# bench/accelerator.py on a GPU machine that can reach no network: where gmia's requirements are
# missing, the wheels bench/prepare_accelerator.sh gathered (packages the image lacks, so none
# shadows one of its own) are installed without dependencies into a folder put first on
# PYTHONPATH. The ONNX files come from bench/.assets. Arguments go to bench/accelerator.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if ! "$python" -c "import ml_collections, tensorflow_datasets, array_record" 2>/dev/null; then
  if [ ! -d bench/.wheels ]; then
    echo "gmia's requirements are missing and bench/.wheels is absent: run" \
         "bench/prepare_accelerator.sh where a registry answers, and carry bench/.wheels" >&2
    exit 1
  fi
  site=${TMPDIR:-/tmp}/gmia-site
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" bench/.wheels/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export GMIA_TEST_ASSETS=${GMIA_TEST_ASSETS:-$PWD/bench/.assets}
export PYTHONUNBUFFERED=1
exec "$python" bench/accelerator.py "$@"
