"""How much of uvicorn's loop CPU per request is the read callback (httptools parsing,
data_received creating the task): wraps HttpToolsProtocol.data_received with thread CPU time,
reads the loop thread's CPU from /proc, and drives the reference app with loopscale's load
generator (closed model) for 4 s. Session 4 measured 10-14% (READ_CALLBACK_SHARE in routes.rs).

    workload/reference/fastapi/.venv/bin/python workload/reference/experiments/read_callback_share.py /hello 4
"""
import os, sys, threading, time, subprocess
from pathlib import Path
REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE / "fastapi"))
import uvicorn
from uvicorn.protocols.http import httptools_impl as h

acc = {"dr_ns": 0, "dr_calls": 0}
orig = h.HttpToolsProtocol.data_received
def wrapped(self, data):
    t0 = time.thread_time_ns()
    try:
        return orig(self, data)
    finally:
        acc["dr_ns"] += time.thread_time_ns() - t0
        acc["dr_calls"] += 1
h.HttpToolsProtocol.data_received = wrapped
main_tid = threading.get_native_id()
PORT = 18931

def schedstat():
    with open(f"/proc/self/task/{main_tid}/schedstat") as f:
        return int(f.read().split()[0])

def driver():
    time.sleep(2)
    load = str(REFERENCE.parents[1] / "target" / "release" / "loopscale-workload")
    path = sys.argv[1] if len(sys.argv) > 1 else "/hello"
    p = subprocess.Popen([load, "load", "--target", f"http://127.0.0.1:{PORT}", "--path", path, "--model", "closed",
                          "--concurrency", sys.argv[2] if len(sys.argv) > 2 else "1", "--connections", sys.argv[2] if len(sys.argv) > 2 else "1", "--warmup", "1s", "--duration", "4s", "--report", os.devnull],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    a = (schedstat(), acc["dr_ns"], acc["dr_calls"])
    time.sleep(3.5)
    b = (schedstat(), acc["dr_ns"], acc["dr_calls"])
    p.wait()
    calls = b[2] - a[2]
    loop = (b[0] - a[0]) / calls / 1000
    dr = (b[1] - a[1]) / calls / 1000
    print(f"{path}: {calls} data_received calls; loop thread CPU {loop:.1f} us per call, data_received {dr:.1f} us = {dr/loop:.0%}", flush=True)
    os._exit(0)

threading.Thread(target=driver, daemon=True).start()
uvicorn.run("app:app", app_dir=str(REFERENCE / "fastapi"), host="127.0.0.1", port=PORT, loop="uvloop", http="httptools", access_log=False, log_level="warning")
