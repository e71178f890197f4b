#!/usr/bin/env bash
# GPU check of fastops in one command, for an H100 box with no network (under 9 minutes):
#
#     bash bench/gpu_check.sh                   # from the repository root or anywhere
#
# Stages, each under its own `timeout`, each logged to <logs>/<stage>.log:
#   wheels     pip install --no-index wheels/*.whl          (only when wheels/ exists, see below)
#   build      CUDACXX=/usr/local/cuda/bin/nvcc FASTOPS_CUDA=ON pip install --no-build-isolation -v .
#              (plus --no-index --no-deps: offline)
#   info       fastops.info() must say built_with_cuda and see a device
#   pytest     pytest -m gpu -q
#   memcheck   compute-sanitizer --tool memcheck  over a reduced -k selection of the GPU tests
#   racecheck  compute-sanitizer --tool racecheck over the same selection
#              (both skipped when compute-sanitizer is absent)
#   bench      python bench/run.py --quick --device cuda
# and a summary last: PASS/FAIL/TIMEOUT/SKIP and seconds per stage. Exit status 1 if any stage failed.
#
# Logs and benchmark JSON go to $OUT when set (the device runner collects it), else to
# bench/results/gpu_check/. Settings (environment):
#   PYTHON               interpreter (default python3); the box needs torch (CUDA), nanobind,
#                        scikit-build-core, cmake, ninja, pytest, and google-benchmark for the bench stage.
#   FASTOPS_SANITIZER_K  pytest -k expression for the sanitizer stages (default below): sanitizers
#                        slow CUDA down 10-100x, so they run a few GPU tests, not all of them.
#
# Missing wheels (the box has no network). google-benchmark has no dependencies; fetch the wheel for
# the box's Python (3.12) on a machine with network, inside the repository:
#     pip download google-benchmark --python-version 3.12 --only-binary=:all: -d wheels/
# wheels/ is git-ignored; carry it to the box with the working tree (the device runner's `carry`),
# and the `wheels` stage runs `pip install --no-index wheels/*.whl` there.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
LOGS=${OUT:-bench/results/gpu_check}
SANITIZER_K=${FASTOPS_SANITIZER_K:-"lut_gemm_dtypes_and_groups or lut_gemm_batch_sizes or test_mask_and_bitmask or test_candidates or test_cuda_decode_path or test_gemm_large_multithreaded or (spmm_matches_dense and 0.7) or (cuda_matches_cpu and dtype1)"}
BUDGET_S=530  # the whole script, under the 9-minute slot of the device runner
mkdir -p "$LOGS"
START=$(date +%s)
SUMMARY=()
FAILED=0

# stage NAME LIMIT_S CMD...: runs CMD under timeout (capped by what is left of BUDGET_S).
stage() {
  local name=$1 limit=$2 left rc t0 dt status
  shift 2
  left=$((START + BUDGET_S - $(date +%s)))
  if ((left < 15)); then
    SUMMARY+=("$(printf '%-10s SKIP     (out of time budget)' "$name")")
    FAILED=1
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s): $*"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  dt=$((($(date +%s%N) - t0) / 100000000))
  dt="$((dt / 10)).$((dt % 10))"
  case $rc in
    0) status=PASS ;;
    124 | 137) status=TIMEOUT ;;
    *) status=FAIL ;;
  esac
  tail -n 15 "$LOGS/$name.log"
  SUMMARY+=("$(printf '%-10s %-8s %7ss  rc=%-3s %s' "$name" "$status" "$dt" "$rc" "$LOGS/$name.log")")
  ((rc != 0)) && FAILED=1
  return $rc
}

skip() { SUMMARY+=("$(printf '%-10s SKIP     (%s)' "$1" "$2")"); }

if compgen -G "wheels/*.whl" >/dev/null; then
  stage wheels 60 "$PYTHON" -m pip install --no-index wheels/*.whl
fi

# Offline: --no-index fails at once instead of retrying the network, and --no-deps keeps pip from
# re-resolving torch's own requirements (torch 2.13 wants setuptools>=77, absent from many venvs);
# a missing runtime dependency of fastops shows up in the info stage as an ImportError.
if stage build 150 env CUDACXX=/usr/local/cuda/bin/nvcc FASTOPS_CUDA=ON \
  "$PYTHON" -m pip install --no-build-isolation --no-index --no-deps -v .; then
  stage info 30 "$PYTHON" -c '
import json, fastops
info = fastops.info()
print(json.dumps(info, indent=1, default=str))
assert info["built_with_cuda"], "fastops was built without CUDA"
assert info["cuda_devices"], "fastops sees no CUDA device"'
  stage pytest 100 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider

  SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [[ -n $SANITIZER ]]; then
    # No caching allocator: each torch tensor is its own cudaMalloc, so memcheck sees its real bounds.
    for tool in memcheck racecheck; do
      stage "$tool" 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 1 \
        "$PYTHON" -m pytest -m gpu -q -x -p no:cacheprovider -k "$SANITIZER_K"
    done
  else
    skip memcheck "compute-sanitizer not found"
    skip racecheck "compute-sanitizer not found"
  fi

  stage bench 150 "$PYTHON" bench/run.py --quick --device cuda --out "$LOGS/bench"
else
  for s in info pytest memcheck racecheck bench; do skip "$s" "build failed"; done
fi

echo
echo "=== gpu_check summary ($(($(date +%s) - START)) s, logs in $LOGS)"
printf '%s\n' "${SUMMARY[@]}"
echo "BENCHMARKS.md: copy $LOGS/bench/*.json into bench/results/ and run python bench/render.py"
exit $FAILED
