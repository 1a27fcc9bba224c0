#!/usr/bin/env bash
# Runs named stages one after another, each whatever the others did, and prints a summary: each stage's
# time and result, and the failed ones by name. Exits 1 if any stage failed.
#
#   bash .ci/stages.sh NAME1 "COMMAND1" NAME2 "COMMAND2" ...
#
# Each COMMAND runs in `bash -o pipefail -c`. Used by `make test`, `make test-long` and .ci/run.
set -uo pipefail
if [ $(($# % 2)) -ne 0 ] || [ $# -eq 0 ]; then
  echo "usage: $0 NAME COMMAND [NAME COMMAND ...]" >&2
  exit 2
fi
names=() results=() failed=()
start_all=$SECONDS
while [ $# -gt 0 ]; do
  name=$1 cmd=$2
  shift 2
  echo
  echo "==== stage $name [load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)]: $cmd"
  t0=$SECONDS
  bash -o pipefail -c "$cmd"
  rc=$?
  dt=$((SECONDS - t0))
  names+=("$name")
  if [ $rc -eq 0 ]; then
    results+=("passed in ${dt} s")
  else
    results+=("FAILED (exit $rc) after ${dt} s")
    failed+=("$name")
  fi
  echo "==== stage $name: ${results[-1]}"
done
echo
echo "==== summary ($((SECONDS - start_all)) s in all)"
for i in "${!names[@]}"; do
  printf '  %-24s %s\n' "${names[$i]}" "${results[$i]}"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "==== failed stages: ${failed[*]}"
  exit 1
fi
echo "==== every stage passed"
