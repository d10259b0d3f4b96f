"""A second CPU load for checking that the test suite passes on a busy machine (tests/README.md, "Loaded runs").

    .venv/bin/python tests/load.py --threads 2 -- make test      # the load runs exactly as long as the command
    .venv/bin/python tests/load.py --threads 2 --seconds 600     # or for a fixed time (Ctrl-C stops it)

``--threads N``: N busy threads in this process, each multiplying 256×256 float64 matrices with numpy (BLAS limited to
one thread per call, and the GIL released during it, so N threads keep N cores busy); ``--processes N`` instead runs
N processes of one such thread each. At the end it prints how much work the load got done per second, so two runs can
be compared. The command's exit status is returned.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one core per load thread
    os.environ[_var] = "1"

import numpy as np  # noqa: E402  (after the BLAS thread limits)


def busy(stop: threading.Event, counts: list[int], slot: int) -> None:
    rng = np.random.default_rng(slot)
    a, b = rng.standard_normal((256, 256)), rng.standard_normal((256, 256))
    while not stop.is_set():
        a = np.tanh(a @ b)
        counts[slot] += 1


def run_threads(n: int, stop: threading.Event) -> tuple[list[threading.Thread], list[int]]:
    counts = [0] * n
    threads = [threading.Thread(target=busy, args=(stop, counts, i), daemon=True, name=f"load-{i}") for i in range(n)]
    for t in threads:
        t.start()
    return threads, counts


def child_main(seconds: float) -> None:
    """One load process (``--processes``): one busy thread until killed or ``seconds`` pass; prints its count."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _, counts = run_threads(1, stop)
    stop.wait(seconds if seconds > 0 else None)
    stop.set()
    print(counts[0], flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        command, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="e.g. tests/load.py --threads 2 -- make test")
    p.add_argument("--threads", type=int, default=0, help="busy threads in this process")
    p.add_argument("--processes", type=int, default=0, help="busy processes (one thread each)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: with the command, or never)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(a.seconds)
        return 0
    if (a.threads > 0) == (a.processes > 0):
        p.error(f"give one of --threads N or --processes N (got --threads {a.threads} --processes {a.processes})")

    stop = threading.Event()
    t0 = time.monotonic()
    counts: list[int] = []
    children: list[subprocess.Popen] = []
    if a.threads:
        _, counts = run_threads(a.threads, stop)
    else:
        children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"], stdout=subprocess.PIPE,
                                     text=True) for _ in range(a.processes)]
    what = f"{a.threads} thread(s)" if a.threads else f"{a.processes} process(es)"
    print(f"load: {what} busy (pid {os.getpid()})" + (f"; running {' '.join(command)}" if command else ""),
          file=sys.stderr, flush=True)
    status = 0
    try:
        if command:
            status = subprocess.call(command)
        else:
            stop.wait(a.seconds if a.seconds > 0 else None)
    except KeyboardInterrupt:
        status = 130
    finally:
        stop.set()
        for c in children:
            c.terminate()
        done = sum(counts) + sum(int((c.communicate()[0] or "0").strip() or 0) for c in children)
        elapsed = time.monotonic() - t0
        print(f"load: {what} for {elapsed:.0f} s, {done / max(elapsed, 1e-9):.1f} matmuls/s "
              f"({done / max(elapsed, 1e-9) / max(1, a.threads or a.processes):.1f} per thread)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
