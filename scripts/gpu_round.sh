#!/usr/bin/env bash
# One batched GPU round: install an FA3 wheel if one is in .whl/, run the CUDA test suite and the
# benchmark tour, and pack logs and results into $OUT (when set).
#   scripts/gpu_round.sh [pytest args...]     env: BENCH_ARGS, SKIP_TESTS=1, SKIP_BENCH=1
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_round_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-400}" make test PYTEST_ARGS="-q -ra --durations=25 $*" > "$OUT/test.log" 2>&1 || rc=$?
  tail -n 60 "$OUT/test.log"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout "${BENCH_TIMEOUT:-400}" make bench BENCH_ARGS="${BENCH_ARGS:-}" > "$OUT/bench.log" 2>&1 || rc=$?
  grep -v "^#" "$OUT/bench.log" | tail -n 150
  grep "^#" "$OUT/bench.log" | tail -n 20
fi
tar czf "$OUT/results.tgz" benchmarks/results 2>/dev/null
exit $rc
