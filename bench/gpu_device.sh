#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine, as one prepared command (device time
# is ~15 minutes a session, the machine's start included; one command may run 600 s). First, here:
# scripts/gpu-wheels. Then call the device tool's run with carry [".whl"] and one of:
#
#   bash bench/gpu_device.sh quick   (timeout_s 560) versions, the GPU-marked tests, bench/gpu.py
#   bash bench/gpu_device.sh suite   (timeout_s 560) the whole suite but the slow tests, GPU visible
#   bash bench/gpu_device.sh uint8   (timeout_s 460) bench/gpu.py with --wavlm-storage uint8
#
# Worst cases, every timeout reached: quick 530 s (install ~20, versions ~10, tests 140 + 10,
# bench 350 + 10), suite 530 s, uint8 420 s; quick's bench usually ends in about 4 minutes. The
# timeouts send SIGINT, so pytest and bench/gpu.py still print their summaries (SIGKILL 10 s later).
# Everything is also written under $OUT (versions.txt, gpu_tests.txt, gpu_bench.txt, suite.txt,
# gpu_bench_uint8.txt), which comes back. Record bench/gpu.py's numbers in docs/benchmarks.md
# ("GPU bench").
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
out=${OUT:-/tmp/dfdetect-device}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed: run scripts/gpu-wheels here and carry .whl" >&2; exit 1; }
# Bytecode now, once (~5 s), rather than in every dask worker's first import of dask and distributed
python3 -m compileall -q -j0 /tmp/site >/dev/null 2>&1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 DFDETECT_TEST_GPU=1 HF_HUB_OFFLINE=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count())"
    nproc
    python3 -m pip list 2>/dev/null   # the image's own versions, which nobody here has read yet
} 2>&1 | tee "$out/versions.txt"
case "$mode" in
    quick)
        timeout -s INT -k 10 140 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/ 2>&1 | tee "$out/gpu_tests.txt"
        timeout -s INT -k 10 350 python3 bench/gpu.py --max-seconds 320 2>&1 | tee "$out/gpu_bench.txt" ;;
    suite)
        # 8 pytest workers (pytest-xdist is in the image): the serial suite takes ~10 min on 2 cores
        timeout -s INT -k 10 490 python3 -m pytest -q -rs -n 8 --durations=20 -p no:cacheprovider -m "not slow" tests/ \
            2>&1 | tee "$out/suite.txt" ;;
    uint8)
        timeout -s INT -k 10 380 python3 bench/gpu.py --max-seconds 350 --wavlm-storage uint8 2>&1 | tee "$out/gpu_bench_uint8.txt" ;;
    *)
        echo "mode: quick, suite or uint8" >&2; exit 2 ;;
esac
