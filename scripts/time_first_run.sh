#!/usr/bin/env bash
# Time the README's two commands as a new user meets them: a fresh clone of this checkout and an
# empty cache ($BORT_CACHE in a new folder: the default teacher, the docstring corpus and the
# fused kernels are built on the way), then the same again warm. Prints, for each run, the wall
# time, the peak memory of its largest process (/usr/bin/time -v) and the load average at its
# start, then the cold run's phase-by-phase timing (the default teacher's build phases, from
# its log).
#
#   bash scripts/time_first_run.sh [WORK_DIR] [--setup]
#
# The clone uses the existing virtual environment ($BORT_VENV, default ~/.cache/bort/venv) through
# its .venv link. scripts/setup.sh is run only with --setup, because it points the venv's
# editable install at the clone (on a shared machine that moves everyone's `import bort`); the
# commands below run from the clone's root, where its own bort/ is imported first anyway.
# Timings under load are inflated: compare the load column.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
work=""
setup=0
for arg in "$@"; do
  case $arg in
    --setup) setup=1 ;;
    *) work=$arg ;;
  esac
done
work=${work:-$(mktemp -d /tmp/bort-first-run.XXXXXX)}
mkdir -p "$work"
export BORT_VENV=${BORT_VENV:-$HOME/.cache/bort/venv}
export BORT_CACHE=$work/cache  # empty: nothing built yet
rm -rf "$work/clone" "$BORT_CACHE"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
ln -sfn "$BORT_VENV" .venv

results=()
timed() {  # timed NAME COMMAND...: run it, keep its log and /usr/bin/time's report
  local name=$1; shift
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "[time_first_run] $name: $*" >&2
  local status=0
  /usr/bin/time -v -o "$work/$name.time" bash -c "$*" > "$work/$name.log" 2>&1 || status=$?
  local wall peak
  wall=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$work/$name.time")
  peak=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/$name.time")
  results+=("| $name | $wall | $((peak / 1024)) | $load | $status |")
}

if [ "$setup" = 1 ]; then
  timed setup 'bash scripts/setup.sh'
fi
timed search_cold '.venv/bin/python run_search.py'
rm -rf runs/search  # the warm run starts a new search, with everything cached
timed search_warm '.venv/bin/python run_search.py'
timed tests_fast '.venv/bin/python -m pytest -q tests'

echo
echo "clone $work/clone, cache $BORT_CACHE, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| run | wall (h:mm:ss) | peak memory (MB) | load at start | exit |"
echo "|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
echo
echo "cold run, default teacher's build phases:"
grep -o 'default teacher: .* done in [0-9]* s' "$work/search_cold.log" | sed 's/^default teacher: /  /' || true
echo "(full logs: $work/*.log)"
