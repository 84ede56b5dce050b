"""A server's processes and their CPU to the microsecond, for the experiments that measure what
one connection or one request costs (`/proc/<pid>/task/<tid>/schedstat` counts nanoseconds;
calibrate's `/proc/<pid>/stat` sampler counts clock ticks, too coarse for one request)."""
import os
import subprocess


def server_pids(supervisor: int) -> list[int]:
    """The supervisor (uvicorn's or Node's primary, the emulation's) and its worker processes."""
    kids = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
    return [supervisor] + [int(k) for k in kids]


def cpu_us(pids: list[int]) -> float:
    """CPU time of every thread of `pids` so far, in microseconds."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    return total / 1000
