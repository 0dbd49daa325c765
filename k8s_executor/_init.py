"""The worker as its container's init: PID 1 duties in a few lines of the standard library.

In a pod the container's command is PID 1 of its PID namespace, and PID 1 is special: the
kernel delivers it no signal it has not installed a handler for, SIGKILL from inside the
namespace included. Run directly, our worker would ignore the kubelet's SIGTERM (every
pod deletion would wait out ``terminationGracePeriodSeconds``), survive a task's own
``os.kill(os.getpid(), SIGKILL)`` (its calls then "succeed" with no result) and never reap
the orphans a task's subprocesses leave. So, when ``K8S_EXECUTOR_INIT=1`` (the Job
manifest sets it) or the worker finds itself PID 1, it forks first::

    PID 1  init:   passes SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 on to the worker,
                   reaps every child, exits with the worker's status (128 + N for a signal)
    PID 2  worker: an ordinary process: a signal's default action applies, so SIGTERM
                   ends it at once unless a task installed its own handler

Weighed against the alternatives (docs/architecture.md): ``shareProcessNamespace`` makes
the pause container PID 1 but lets every container of the pod see and signal the others
and is one more thing a ``pod_template`` can undo; a separate init binary (tini, dumb-init)
would have to be in every image, and ours are snapshots of a virtualenv. Hand-written,
because no library does this for a Python process; it is small and has no dependencies.

Outside a container (the local backend) none of this runs: the worker is a plain child of
the client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Final

from ._contract import ENV_INIT

ENV: Final = ENV_INIT

# Signals a kubelet, a container runtime or `kubectl exec kill` may send to stop or poke
# the container; all are passed on to the worker. SIGCHLD is ours.
FORWARDED: Final = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_SET_PDEATHSIG: Final = 1


def wanted() -> bool:
    """Whether this process should act as its container's init."""
    setting = os.environ.get(ENV, "")
    if setting == "0":
        return False
    return setting == "1" or os.getpid() == 1


def exit_code(status: int) -> int:
    """A wait status as a container runtime reports it: the code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def become_init() -> None:
    """Fork; return in the child (the worker proper), never return in the parent.

    Signals are blocked across the fork, so none is lost between the fork and the
    parent's handlers being in place, and none reaches the child with ours installed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    init = os.getpid()
    child = os.fork()
    if child == 0:
        if init != 1:
            _die_with(init)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        return
    _serve(child)


def _die_with(init: int) -> None:
    """The worker dies with its init. When the init is PID 1 the kernel sees to that;
    where it is not (``shareProcessNamespace``, a kubelet running pods as processes),
    PR_SET_PDEATHSIG does."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != init:  # the init died before prctl took effect
        os._exit(128 + signal.SIGKILL)


def _serve(child: int) -> None:
    if os.getpid() != 1 and sys.platform.startswith("linux"):
        # Not PID 1: ask to be the reaper of our descendants' orphans anyway.
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            # Blocks until any child ends: the worker, or an orphan handed to us.
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the worker is always our child
            os._exit(0)
        if pid == child:
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM:
                # Into the container log, hence into the termination message the client
                # shows with WorkerLostError when the tasks did not finish. Not for a
                # worker that left on SIGTERM by itself (an idle warm worker: nothing lost).
                os.write(2, b"k8s_executor.worker: SIGTERM: the pod is being stopped\n")
            # Whatever the worker left behind dies with us (PID 1) or with its group.
            os._exit(exit_code(status))
