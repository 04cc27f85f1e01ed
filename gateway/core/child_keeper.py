"""The keeper of one child process: run as a script by ``gateway.core.children``, never imported.

``python -I -S child_keeper.py PARENT_PID GRACE_S UNSET -- ARGV...``

It exists so that no child outlives the gateway, even one killed with SIGKILL. The keeper is the
leader of a new process group (the gateway starts it with ``start_new_session``) and asks the
kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``); the parent-death signal
reaches only the process that asked, and a server started through ``npx`` or a shell has children
of its own, so the keeper turns it into the end of the whole group: SIGTERM to every member, then
SIGKILL after ``GRACE_S``. The gateway stops a child the same way (``killpg``), so both paths end
alike. The keeper holds none of the child's pipes (its stdin and stdout go to /dev/null once the
child runs), so the child sees end-of-file on stdin exactly when the gateway closes it.

``UNSET``: comma-separated names the child must not get although the keeper has them: Python sets
LC_CTYPE in its own environment when it coerces a C locale (PEP 538), which would leak it.

Exit status: the child's (128 + signal when a signal ended it); 127 when the command cannot start
(the reason on stderr, which the gateway logs). Standard library only: it runs in the child's
environment, which is exactly what the operator named, so nothing of the gateway's is importable.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


class Stop(Exception):
    pass


def stop(signum, frame):
    raise Stop


def end_group(child, grace_s):
    """SIGTERM to the group, SIGKILL to what is left after ``grace_s`` (the keeper included)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + grace_s
    while child is not None and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)


def main():
    parent, grace_s, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[5:]
    env = {k: v for k, v in os.environ.items() if k not in sys.argv[3].split(",")}
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the gateway's own stop still ends the group
        pass
    if os.getppid() != parent:  # the gateway died before the kernel could be asked
        return 1
    child = None
    try:
        try:
            child = subprocess.Popen(argv, env=env)
        except OSError as exc:
            print(f"cannot start {argv[0]}: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return 127
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        code = child.wait()
    except Stop:
        end_group(child, grace_s)
        return 1  # not reached: the group's SIGKILL ends the keeper too
    # The child is gone; whatever it started goes with it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
