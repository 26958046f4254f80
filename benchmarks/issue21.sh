#!/usr/bin/env bash
# The measurements of issue 21 (benchmarks/RESULTS.md, "Runtimes side by side"): eager, the
# fast path (chosen afresh), int8, and ONNX Runtime / OpenVINO both on `drnet export onnx`'s
# file and as the fast path's backends, 2 threads, interleaved rounds, medians. On a shared
# machine each command takes the CPU lock ($LOCK) so that other jobs wait.
# ISA=avx2 runs torch's, oneDNN's and MKL's kernels as on an AVX2-only CPU
# (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, and MKL_ENABLE_INSTRUCTIONS for the Winograd path's
# matrix products; OpenVINO's oneDNN honours the cap too, ONNX Runtime's MLAS does not).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
LOCK=${LOCK:-/work/briefs/cpu.lock}
TAG=${ISA:-native}
if [ "${ISA:-}" = avx2 ]; then export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2; fi
export DRNET_CACHE_DIR=${DRNET_CACHE_DIR:-$(mktemp -d)}
ALL=eager,fast,winograd,int8,onnx,onnx_openvino,onnxruntime,openvino
run() { echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2; flock "$LOCK" "$@"; echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
run drnet benchmark --model drn_d_22 --task segmentation --size 512x1024 --variants "$ALL" \
    --repeats "${REPEATS:-5}" --threads 2 --no-memory --out "$OUT" --name "i21_${TAG}_d22_seg_512x1024"
run drnet benchmark --model drn_c_26 --task classification --size 224 --variants "$ALL" \
    --repeats "${REPEATS_CLS:-15}" --threads 2 --no-memory --out "$OUT" --name "i21_${TAG}_c26_cls_224"
run drnet benchmark --model drn_d_22 --task segmentation --size 1024x2048 \
    --variants "${BIG:-eager,fast,winograd,onnx,onnxruntime,openvino}" --repeats "${REPEATS_BIG:-3}" \
    --threads 2 --no-memory --out "$OUT" --name "i21_${TAG}_d22_seg_1024x2048"
