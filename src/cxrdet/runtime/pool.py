"""Process pools whose workers die with their parent.

A parent killed with SIGKILL (`kill -9`, the out-of-memory killer) cannot stop its pool:
its workers would go on, orphaned, writing into the cache for a run nobody waits for.
On Linux each worker asks the kernel for SIGKILL when its parent dies (prctl
PR_SET_PDEATHSIG); elsewhere the pool is a plain ProcessPoolExecutor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of `workers` processes that die with this one."""
    return ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent)


def die_with_parent() -> None:
    """Pool initializer: SIGKILL this process when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the parent died before prctl: already orphaned (adopted by init)
        os._exit(1)
