"""The delivery process's entry point: `python -m bridge.delivery.child_main <fd> <event loop> <parent pid>`.

Started by `bridge.delivery.child_process` only. Before anything else, and before the imports that take a
second or two on a busy machine, it ties itself to the serving process that started it, so that
it never outlives it whatever stage it is at:

- on Linux the kernel sends it SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`);
- a parent that died before that was armed is seen at once (the parent pid has changed);
- SIGINT and SIGTERM sent to the whole process group are for the serving process, which stops
  this one by closing their socket; a SIGTERM that finds the parent gone ends it, though;
- then `bridge.delivery.child` runs, which exits as soon as the socket closes, at every stage.

Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from types import FrameType

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_ORPHANED = 3  # the parent was already gone


def exit_with_parent(parent: int) -> None:
    """Arm every tie to `parent` (a pid); exits at once if it is already gone."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent:
            os._exit(EXIT_ORPHANED)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    if sys.platform.startswith("linux"):
        # A belt, not the mechanism: the socket closing is what stops this process everywhere.
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Checked after arming: a parent that dies from now on is caught by the signal.
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)


def main() -> None:
    fd, event_loop, parent = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    exit_with_parent(parent)
    # Imported only now, with the ties armed (see the module's docstring).
    from bridge.delivery import child

    child.main(fd, event_loop)


if __name__ == "__main__":
    main()
