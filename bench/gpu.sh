#!/usr/bin/env bash
# The GPU checks, in one run on the device machine (torch and transformers there; no transformer_lens, no network):
#   prepare here:  pip download transformer-lens==4.3.0 jaxtyping beartype einops fancy-einsum typeguard better-abc \
#                  transformers-stream-generator wadler-lindig --no-deps -d .whl
#   then:          run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
# Budget: 530 s of timeouts. Prints the five benchmarks' numbers; docs/performance.md and docs/scale.md record them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -c "import transformer_lens" 2>/dev/null || python -m pip install -q --no-index --find-links .whl --no-deps .whl/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
uptime
# the long-context comparison first (21 processes, each loading the model): statistics vs eager vs the SDPA forward
timeout 240 python bench/bench_long_context.py --device cuda --speed 512,2048,8192 --memory 2048,8192,32768 \
  || echo "bench_long_context: failed or timed out"
timeout 100 python bench/bench_activations.py --device cuda --n-prompts 64 --batch-size 16 || echo "bench_activations: failed or timed out"
timeout 30 python bench/bench_device_stats.py --device cuda || echo "bench_device_stats: failed or timed out"
timeout 60 python bench/bench_memory.py --device cuda --tokens 1400 || echo "bench_memory: failed or timed out"
timeout 100 python bench/bench_scale.py --device cuda --prompts 10000 --batch-size 128 --no-site
