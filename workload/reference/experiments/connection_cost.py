"""uvicorn's loop CPU per new connection: 2,000 sequential /hello requests each on its own
connection (`Connection: close`) against 2,000 on one keep-alive connection, the loop thread's
CPU from /proc/self/task/<tid>/schedstat. Session 4: 84-101 us per connection (3 runs); the
emulation's accept does no per-connection framework work yet (workload/reference/README.md).

    workload/reference/fastapi/.venv/bin/python workload/reference/experiments/connection_cost.py
"""
import os, sys, threading, time, socket
from pathlib import Path
REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE / "fastapi"))
import uvicorn
main_tid = threading.get_native_id()
PORT = 18951
def schedstat():
    with open(f"/proc/self/task/{main_tid}/schedstat") as f:
        return int(f.read().split()[0])
REQ_CLOSE = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
REQ_KA = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
def one_close():
    s = socket.create_connection(("127.0.0.1", PORT)); s.sendall(REQ_CLOSE)
    while s.recv(65536): pass
    s.close()
def driver():
    time.sleep(2)
    for _ in range(200): one_close()
    n = 2000
    a = schedstat(); t = time.time()
    for _ in range(n): one_close()
    close_us = (schedstat() - a) / n / 1000
    s = socket.create_connection(("127.0.0.1", PORT))
    def ka():
        s.sendall(REQ_KA); buf = b""
        while b"hello\"}" not in buf: buf += s.recv(65536)
    for _ in range(200): ka()
    a = schedstat()
    for _ in range(n): ka()
    ka_us = (schedstat() - a) / n / 1000
    print(f"loop CPU per /hello: new connection each {close_us:.1f} us, keep-alive {ka_us:.1f} us, connection cost {close_us-ka_us:.1f} us", flush=True)
    os._exit(0)
threading.Thread(target=driver, daemon=True).start()
uvicorn.run("app:app", app_dir=str(REFERENCE / "fastapi"), host="127.0.0.1", port=PORT, loop="uvloop", http="httptools", access_log=False, log_level="warning")
