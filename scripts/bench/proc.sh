#!/usr/bin/env bash
# Readings of /proc for the benchmark scripts (sourced by happy-path.sh and idle.sh).

# utime and stime (clock ticks) summed over the given pids: "user system".
cpu_ticks() {
  local pid u=0 s=0 rest
  for pid in "$@"; do
    # Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    rest=$(sed 's/^.*) //' "/proc/$pid/stat")
    read -r -a f <<< "$rest"
    u=$((u + f[11])); s=$((s + f[12]))
  done
  echo "$u $s"
}
# Busy clock ticks of the whole machine (every CPU, every process and kernel thread: user, nice,
# system, irq, softirq; not steal, the time the host ran something else), from the "cpu" line
# of /proc/stat.
machine_busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# Context switches (voluntary + involuntary) summed over every thread of the given pids.
ctx_switches() {
  local pid t=0
  for pid in "$@"; do
    t=$((t + $(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}')))
  done
  echo "$t"
}
# PSS (proportional set size, what smem reports): each shared page divided among the processes
# that map it. The seven processes run one binary, so its code pages (~11 MB resident) appear
# in every VmRSS and the RSS sum counts them seven times; the PSS sum counts them once.
# sum_kb FIELD PID...: FIELD (Rss or Pss) of /proc/<pid>/smaps_rollup summed over the processes.
sum_kb() { local field=$1 pid t=0; shift; for pid in "$@"; do t=$((t + $(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/smaps_rollup"))); done; echo "$t"; }
