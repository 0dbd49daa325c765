"""Run kubesim standalone:
``python -m tests.kubesim [--runtime process|podman] [--port N] [--pod-start-delay S]``.

The first line on stdout is the kubeconfig path (flushed), so a parent process can read it and
point ``kubectl --kubeconfig`` or a client at it. Serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from tests.kubesim.kubeconfig import Kubesim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kubesim", description=__doc__)
    parser.add_argument("--runtime", choices=("process", "podman"), default="process")
    parser.add_argument("--port", type=int, default=0, help="listen port (default: random)")
    parser.add_argument(
        "--no-controllers", action="store_true", help="API server only (no Job controller etc.)"
    )
    parser.add_argument(
        "--pod-start-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds from a pod's creation to its containers running, as a real node's "
        "scheduling, image and container start take (about 3 s with a cached image)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with Kubesim(
        runtime=args.runtime,
        port=args.port,
        controllers=not args.no_controllers,
        pod_start_delay=args.pod_start_delay,
    ) as sim:
        print(sim.kubeconfig_path, flush=True)
        print(f"kubesim serving on {sim.url}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
