#!/usr/bin/env bash
# benchmarks/proxy_hpo.py as N processes at once, each running single repeats with fresh
# seeds (samplers rotated TPE, GP, CMA-ES) until a deadline, then every finished repeat
# pooled with --summarise. For a machine with many cores, or a GPU that several processes
# share (how the H200 figures in README "HPO" were taken: N=14, DEADLINE=520).
#
#   N=14 DEADLINE=520 RUNS=runs/parallel bash benchmarks/proxy_hpo_parallel.sh
#
# Knobs (environment): N processes, DEADLINE seconds after which none still runs (a repeat
# cut off is lost, finished ones are kept), RUNS folder, PY interpreter, FIRST_SEED, and
# EXTRA arguments for proxy_hpo.py (default: the README's setting). Seeds are FIRST_SEED +
# 50 * process + k, so processes never share one.
set -u
PY=${PY:-.venv/bin/python}
N=${N:-2}
DEADLINE=${DEADLINE:-3600}
RUNS=${RUNS:-runs/proxy_hpo_parallel/$(date +%Y%m%d-%H%M%S)}
FIRST_SEED=${FIRST_SEED:-1000}
EXTRA=${EXTRA:---trials 20 --seeds 8 --confirm 2 --kendall-k 0 --threads 1}
mkdir -p "$RUNS"
SAMPLERS=(tpe gp cmaes)
worker() {
  local i=$1 k=0 left s seed
  while left=$((DEADLINE - SECONDS)); [ "$left" -gt 60 ]; do
    s=${SAMPLERS[$(((i + k) % 3))]}
    seed=$((FIRST_SEED + 50 * i + k))
    # shellcheck disable=SC2086  # EXTRA is a list of arguments
    timeout -s KILL "$left" "$PY" benchmarks/proxy_hpo.py --samplers "$s" --seed "$seed" \
      --repeats 1 $EXTRA --out "$RUNS/${s}_s$seed" > "$RUNS/log_${s}_s$seed.txt" 2>&1
    echo "process $i: $s seed $seed exit $? at ${SECONDS}s"
    k=$((k + 1))
  done
}
pids=()
for i in $(seq 0 $((N - 1))); do worker "$i" & pids+=($!); done
wait "${pids[@]}"
finished=()
for folder in "$RUNS"/*_s*/; do [ -f "$folder/benchmark.json" ] && finished+=("$folder"); done
echo "${#finished[@]} repeats finished in ${SECONDS}s; logs and run folders in $RUNS"
[ "${#finished[@]}" -gt 0 ] && "$PY" benchmarks/proxy_hpo.py --summarise "${finished[@]}"
