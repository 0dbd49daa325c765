"""Everything that talks to podman (through podman-py and podman's REST service).

The only module of the package that imports ``podman``, and only inside functions, so
that ``import k8s_executor`` works where podman-py is not installed. podman errors are
translated here, once, into :class:`PodmanUnavailableError` / :class:`BaseImageError`.

podman is used for what only it has: images in the local store (a base image built
locally, such as the one ``.ci/containers.sh`` imports), and the alternative push path
(``method="podman"``: load the layers into podman, push with podman's own registry
configuration and credentials).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ._errors import BaseImageError, PodmanUnavailableError, RegistryError

__all__ = ["default_podman_url", "inspect_image", "load_and_push", "save_image"]


def default_podman_url() -> str:
    """``CONTAINER_HOST`` (podman's own variable), else the default socket of this user."""
    explicit = os.environ.get("CONTAINER_HOST")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "unix:///run/podman/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"unix://{runtime}/podman/podman.sock"


@contextmanager
def _client(url: str) -> Iterator[Any]:
    """A connected PodmanClient, or a PodmanUnavailableError that says how to get one."""
    try:
        from podman import PodmanClient
    except ImportError as exc:  # pragma: no cover - podman-py is a dependency
        raise PodmanUnavailableError(
            "podman-py is not installed: pip install podman (or k8s-executor)"
        ) from exc
    if shutil.which("podman") is None:
        raise PodmanUnavailableError(
            "podman is not installed (needed for the base image in podman's store): install "
            "it (apt-get install podman / dnf install podman / brew install podman), or use a "
            "base image from a registry (base_image=)"
        )

    def unavailable(cause: str) -> PodmanUnavailableError:
        path = url.removeprefix("unix://")
        return PodmanUnavailableError(
            f"podman's service does not answer at {url} ({cause}): start it with "
            f"`podman system service --time=0 unix://{path}` (or `systemctl --user start "
            "podman.socket`), or point podman_url= / CONTAINER_HOST at a running one"
        )

    if url.startswith("unix://"):
        # Probe the socket ourselves: quicker, and podman-py leaks its socket when the
        # connection is refused.
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(url.removeprefix("unix://"))
            except OSError as exc:
                raise unavailable(exc.strerror or exc.__class__.__name__) from exc
    with PodmanClient(base_url=url) as client:
        try:
            client.ping()
        except Exception as exc:  # podman-py raises APIError or requests' errors here
            raise unavailable(exc.__class__.__name__) from exc
        yield client


def inspect_image(url: str, reference: str) -> dict[str, Any]:
    """podman's inspect data of a local image (``Id``, ``Config``, ``RootFS``, ...)."""
    from podman.errors import APIError, ImageNotFound

    with _client(url) as client:
        try:
            image = client.images.get(reference)
        except ImageNotFound as exc:
            raise BaseImageError(
                f"the base image {reference} is not in podman's store at {url}: build or pull "
                f"it first (podman images lists what is there), or pass another base_image="
            ) from exc
        except APIError as exc:
            raise BaseImageError(f"podman could not inspect {reference}: {exc}") from exc
        attrs: dict[str, Any] = image.attrs
        return attrs


def save_image(url: str, reference: str, path: Path) -> None:
    """Export a local image as a docker-archive, streamed to ``path``."""
    from podman.errors import APIError

    with _client(url) as client:
        try:
            image = client.images.get(reference)
            with open(path, "wb") as out:
                for chunk in image.save(chunk_size=1 << 20):
                    out.write(chunk)
        except APIError as exc:
            raise BaseImageError(f"podman could not export {reference}: {exc}") from exc


def load_and_push(url: str, archive: IO[bytes], reference: str, *, tls_verify: bool) -> None:
    """Load a docker-archive into podman, then push it to ``reference`` with podman.

    The archive is streamed (podman-py's ``images.load`` would read it all into memory).
    """
    from podman.errors import APIError

    with _client(url) as client:
        try:
            response = client.api.post(
                "/images/load", data=archive, headers={"Content-type": "application/x-tar"}
            )
            response.raise_for_status()
            # podman-py 5.8 reads only the camelCase spelling for push (machine.md).
            client.images.push(reference, tlsVerify=tls_verify)
        except APIError as exc:
            raise RegistryError(f"podman could not push {reference}: {exc}") from exc
