#!/usr/bin/env bash
# Download the wheels the GPU device image lacks into benchmarks/gpu/wheels/ (git-ignored), for its
# Python 3.12 on x86-64 (see /work/.library/device/README.md and KINDS.md: the image has torch 2.11,
# transformers 5.17, accelerate 1.15, huggingface_hub 1.33, tokenizers 0.23.2, pandas, pyarrow, xxhash,
# fsspec; no trl, datasets, dill or multiprocess, and it reaches no registry).
# Versions are the ones this project is tested with. Every wheel is fetched with --no-deps; the list is
# the whole closure of what the device lacks. Total must stay under the 64 MiB a `run` call carries.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf wheels && mkdir wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d wheels \
    transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -l wheels
du -sh wheels
