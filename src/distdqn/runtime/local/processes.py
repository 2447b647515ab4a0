"""How the local runtime starts its child processes, and how a child notices that the
learner process is gone.

Children are started with ``forkserver`` where the platform has it (Linux, macOS), else
``spawn``. The fork server is a clean, single-threaded process that imports distdqn (and so
torch and Gymnasium) once; every child is a fork of it. A child so starts in milliseconds
instead of importing torch again (seconds of CPU per child, which delayed the first
experience by as much), without ``fork``'s hazards: the learner process's
threads and any CUDA state are never copied. (Python 3.14 made ``forkserver`` the default
on Linux for the same reasons.) ``distdqn train`` starts the server as soon as the config
is valid, so its imports overlap the command's own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

PRELOAD = ["distdqn.runtime.local"]
"""Modules the fork server imports before it forks any child."""


def process_context() -> Any:
    """The ``multiprocessing`` context for the local runtime's children: ``forkserver``
    (with :data:`PRELOAD`) where available, else ``spawn``."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # no effect once the server runs
        return ctx
    return mp.get_context("spawn")


def start_process_server() -> None:
    """Start the fork server now (it imports :data:`PRELOAD` in the background); a no-op
    where children are spawned or the server already runs."""
    ctx = process_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def expected_parent(ctx: Any) -> int | None:
    """What a child of ``ctx`` should see as its parent pid: this process under ``spawn``;
    None under ``forkserver`` (the parent is the server, which exits with this process)."""
    return os.getpid() if ctx.get_start_method() == "spawn" else None


class ParentWatch:
    """In a child: notices that the process that started it is gone, as a change of the
    parent pid (the child is re-parented). Under ``forkserver`` the parent is the fork
    server, which exits when the learner process does.

    Args:
        expected: :func:`expected_parent` as computed by the starting process, or None.
    """

    def __init__(self, expected: int | None):
        self.first = os.getppid()
        self.expected = expected

    def gone(self) -> bool:
        return os.getppid() != self.first or (self.expected is not None and self.first != self.expected)


def child_setup(label: str) -> None:
    """A worker child's start: Ctrl-C is the learner process's to handle, one torch
    thread, warnings on stderr tagged with ``label``."""
    import logging
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner process coordinates shutdown
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format=f"[{label}] %(levelname)s %(message)s")


def wait_for_params(params: Any, stop_event: Any, parent: ParentWatch) -> bool:
    """Wait while the learner side is being built (no parameters published yet); False
    when the learner process is gone meanwhile."""
    import time

    while params.version() < 0 and not stop_event.is_set():
        if parent.gone():
            return False
        time.sleep(0.01)
    return True
