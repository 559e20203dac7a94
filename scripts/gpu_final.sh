#!/usr/bin/env bash
# One batched GPU round on the lent machine (which starts bare and has no network):
#   phase 1: the CUDA test suite (`make test`, xdist) and a compile warm-up of the tour, concurrently
#            (neither is timed; the warm-up fills Triton's on-disk kernel cache);
#   phase 2: the timed tour, one suite at a time, each writing benchmarks/results/<TAG>_<suite>.*
#            (the host suite: the host table); with PROCESSES=N > 1 each suite runs in N fresh processes
#            (`--processes N`) and also writes benchmarks/results/<TAG>_<suite>_spread.{json,csv}.
# Logs and results are packed into $OUT/results.tgz after every step, so a timeout loses nothing done
# (a --processes run rewrites its results after every process).
# env: TAG (default final), SUITES (default "host attention fp8_quant rht hadamard"), RUN_TESTS (default 1),
#      WARM (default 1), TIMED (default 1), PROCESSES (default 1), TEST_TIMEOUT, WARM_TIMEOUT,
#      LOWPREC_COMMIT (the tree has no .git). A round that does not fit one command's time limit is split:
#      RUN_TESTS=1 TIMED=0 first, then RUN_TESTS=0 WARM=0 on the still-warm machine (the timed tour of all
#      suites with PROCESSES=1 fits in one 10-minute command: its timeouts add up to 555 s).
#      Each suite's timeout is multiplied by PROCESSES, so PROCESSES=3 over all suites does NOT fit one
#      10-minute command: split it by suite, e.g. (timeouts: host 60, rht 75, attention 120, hadamard and
#      fp8_quant 150 s, each times 3)
#        RUN_TESTS=0 WARM=0 PROCESSES=3 SUITES="host rht" scripts/gpu_final.sh        # <= 405 s
#        RUN_TESTS=0 WARM=0 PROCESSES=3 SUITES="attention" scripts/gpu_final.sh       # <= 360 s
#        RUN_TESTS=0 WARM=0 PROCESSES=3 SUITES="hadamard" scripts/gpu_final.sh        # <= 450 s
#        RUN_TESTS=0 WARM=0 PROCESSES=3 SUITES="fp8_quant" scripts/gpu_final.sh       # <= 450 s
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT" logs
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
BENCH_PATH=".${PYTHONPATH:+:$PYTHONPATH}"
TAG="${TAG:-final}"
SUITES="${SUITES:-host attention fp8_quant rht hadamard}"
PROCESSES="${PROCESSES:-1}"
pack() { tar czf "$OUT/results.tgz" benchmarks/results logs 2>/dev/null; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > logs/gpu.txt

if [ "${RUN_TESTS:-1}" = 1 ]; then
  timeout "${TEST_TIMEOUT:-200}" make test PYTEST_ARGS="-n 12 -q -rA --durations=20 -p no:cacheprovider" \
    > logs/test.log 2>&1 &
  test_pid=$!
else
  true & test_pid=$!
fi
warm_pids=()
[ "${WARM:-1}" = 1 ] || SUITES_WARM=""
for s in ${SUITES_WARM-$SUITES}; do
  PYTHONPATH="$BENCH_PATH" timeout "${WARM_TIMEOUT:-170}" python3 -m benchmarks --suite "$s" --no-write \
    > "logs/warm_$s.log" 2>&1 &
  warm_pids+=($!)
done
wait "$test_pid"; echo "tests rc=$?" | tee -a logs/summary.txt
[ ${#warm_pids[@]} -gt 0 ] && wait "${warm_pids[@]}"
pack
[ "${TIMED:-1}" = 1 ] || exit 0

for s in $SUITES; do
  case $s in hadamard) t=150 ;; attention) t=120 ;; fp8_quant) t=150 ;; host) t=60 ;; *) t=75 ;; esac
  PYTHONPATH="$BENCH_PATH" timeout "$((t * PROCESSES))" python3 -m benchmarks --suite "$s" --tag "${TAG}_$s" \
    --processes "$PROCESSES" > "logs/bench_$s.log" 2>&1
  echo "bench $s processes=$PROCESSES rc=$?" | tee -a logs/summary.txt
  pack
done
