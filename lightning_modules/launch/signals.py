"""The pre-emption signal flag (no heavy imports: ``lift3d`` installs it first thing inside a SLURM job, so a
SIGUSR1 that arrives while torch is still importing is remembered instead of killing the process — SIGUSR1's
default action is to terminate). :class:`lightning_modules.launch.cluster.Preemption` acts on it at a step boundary."""

from __future__ import annotations

import os
import signal
import threading

_received: dict[int, bool] = {}
_installed: dict[int, object] = {}


def _flag(signum, frame) -> None:
    _received[signum] = True
    try:  # async-signal-safe enough for a note in the job log
        os.write(2, f"lift3d: received signal {signum} (pre-emption): checkpointing at the next step\n".encode())
    except OSError:
        pass


def install_signal_flag(signum: int = signal.SIGUSR1) -> None:
    """Catch ``signum`` from now on (set early, so a signal during start-up does not kill the process: SIGUSR1's
    default action is to terminate). Main thread only; idempotent."""
    if threading.current_thread() is not threading.main_thread() or signum in _installed:
        return
    _installed[signum] = signal.signal(signum, _flag)


def signal_received(signum: int = signal.SIGUSR1) -> bool:
    return _received.get(signum, False)


