# Split one traced `ctr run --rm` into where its time went, from perf's
# sched tracepoints (`perf script -F comm,pid,tid,time,event,trace` of
# sched_process_exec and sched_process_exit): prints, in milliseconds,
#   before  ctr's exec to the first exec of a containerd-shim-* binary
#           (ctr and containerd: image, snapshot, bundle, the task's start)
#   shim    from there to the exit of the last containerd-shim-* process
#           containerd executed (its `delete` cleanup, which containerd
#           runs as the shim's connection closes and waits for): the
#           runtime's whole part, with containerd's handling of its calls
#   after   from there to ctr's exit (bundle and snapshot removal)
#   total
# A run whose events are incomplete prints nothing.
{
  # The "pid/tid" field; the time and the event follow it.
  k = 0
  for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\/[0-9]+$/) { k = i; break }
  if (!k) next
  split($k, ids, "/"); pid = ids[1]
  t = $(k + 1); sub(/:$/, "", t); t *= 1000
  ev = $(k + 2)
  if (ev ~ /sched_process_exec/) {
    if ($0 ~ /filename=[^ ]*\/ctr( |$)/ && ctr_pid == "") { ctr_pid = pid; t0 = t }
    if ($0 ~ /filename=[^ ]*\/containerd-shim-[^ \/]*( |$)/) {
      if (first_shim == "") first_shim = t
      last_shim_pid = pid
    }
  } else if (ev ~ /sched_process_exit/ && $0 ~ /group_dead=true/) {
    exited[pid] = t
  }
}
END {
  if (ctr_pid == "" || first_shim == "" || !(last_shim_pid in exited) || !(ctr_pid in exited)) exit
  end_shim = exited[last_shim_pid]
  printf "%.1f %.1f %.1f %.1f\n", first_shim - t0, end_shim - first_shim, exited[ctr_pid] - end_shim, exited[ctr_pid] - t0
}
