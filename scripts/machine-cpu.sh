#!/usr/bin/env bash
# Run a command and print its wall time and the whole machine's CPU time (user + nice + system from
# /proc/stat, every process included: Ray's, Chromium's, pip's) while it ran. The figures of
# docs/testing.md were taken this way, e.g. on a fresh clone:  scripts/machine-cpu.sh .ci/run
# Linux only; run it with nothing else busy on the machine, or its CPU is counted too.
set -uo pipefail
cpu() { awk '/^cpu /{printf "%.2f", ($2 + $3 + $4) / 100}' /proc/stat; }
c0=$(cpu); t0=$(date +%s.%N)
"$@"; rc=$?
c1=$(cpu); t1=$(date +%s.%N)
awk -v rc="$rc" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" \
    'BEGIN { printf "machine-cpu: exit %d, wall %.1f s, machine CPU %.1f CPU-s\n", rc, t1 - t0, c1 - c0 }' >&2
exit $rc
