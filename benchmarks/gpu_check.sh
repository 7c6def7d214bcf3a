#!/usr/bin/env bash
# The paired step benchmark and the memory benchmark at a realistic shape on a lent GPU machine:
# a randomly initialised Qwen2.5-1.5B-shaped model (benchmarks/gpu/make_model.py), LoRA r=64 on all linear
# layers, batch 8 × 1024 tokens, bf16, gradient checkpointing off. Results go to $OUT/RESULTS.md (or benchmarks/RESULTS.md without $OUT).
#
# Before the call, here: bash benchmarks/gpu/prepare_wheels.sh   (16 MiB of wheels, git-ignored)
# The call (device tool `run`, about 6 minutes of device time):
#   command: bash benchmarks/gpu_check.sh
#   carry:   ["benchmarks/gpu/wheels"]
#   timeout_s: 540
# Then copy the section from the returned RESULTS.md into benchmarks/RESULTS.md.
#
# CPU dry run of the same path at a tiny shape: bash benchmarks/gpu_check.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONWARNINGS=ignore
results="${OUT:-benchmarks}/RESULTS.md"
if [[ -d benchmarks/gpu/wheels && "${1:-}" != "--tiny" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        benchmarks/gpu/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m pip show torch transformers accelerate huggingface_hub tokenizers pyarrow pandas fsspec 2>/dev/null \
        | grep -E '^(Name|Version)' | paste - - || true
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" == "--tiny" ]]; then
    model=/tmp/slowed-gpu-check-tiny
    shape=(--batch-size 2 --max-length 64 --rank 4 --batches 2)
    rounds=(--rounds 1 --profile-top 3)
    memory=(--steps 1 --repeats 1)
    python3 benchmarks/gpu/make_model.py "$model" --tiny
else
    model=/tmp/qwen2.5-1.5b-random
    shape=(--batch-size 8 --max-length 1024 --rank 64 --batches 4 --row-repeats 3)
    rounds=(--rounds 5 --profile-top 12)
    memory=(--steps 3 --repeats 1)
    python3 benchmarks/gpu/make_model.py "$model"
fi
# Gradient checkpointing off for the trainers, as in the hand loop, so that the floor ratio compares like with like.
python3 benchmarks/bench_training_step.py --model "$model" "${shape[@]}" "${rounds[@]}" --gradient-checkpointing off \
    --results "$results"
python3 benchmarks/bench_memory.py --model "$model" "${shape[@]}" "${memory[@]}" \
    --participants stock,lem_st,initial,hand --results "$results"
