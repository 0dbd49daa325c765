"""``k8s-executor doctor``'s image checks: the registry answers and lets us push, podman
answers (when the base image is in its store), the base image has this Python."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._admin import (
    BaseImage,
    Registry,
    default_podman_url,
    find_credentials,
    inspect_image,
    is_local_reference,
    split_reference,
)

if TYPE_CHECKING:
    from .doctor import Report

# The OCI image spec's "empty" blob (the two bytes ``{}``): pushing it proves we may push,
# and leaves nothing that matters (registries keep one copy per digest, and garbage-collect
# unreferenced blobs).
_EMPTY_BLOB = b"{}"
_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def _registry_parts(registry: str, repository: str) -> tuple[str, str, bool | None]:
    """(host, repository path, insecure) as ``build_image`` reads ``registry``."""
    insecure = True if registry.startswith("http://") else None
    name = registry.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, _, namespace = name.partition("/")
    return host, f"{namespace}/{repository}" if namespace else repository, insecure


def _check_registry(registry: str, repository: str, timeout: float) -> str:
    host, repo, insecure = _registry_parts(registry, repository)
    with Registry(host, insecure=insecure, timeout=timeout) as target:
        target.manifest_digest(repo, "k8sx-doctor-probe")  # answers, and lets us pull
        target.upload_blob(repo, _EMPTY_DIGEST, len(_EMPTY_BLOB), lambda: _EMPTY_BLOB)
        who = find_credentials(host, repo)
        return f"{target.base_url}/{repo}: answers, pull and push allowed " + (
            f"(as {who.username!r})" if who else "(anonymously)"
        )


def _check_podman(url: str, base: str) -> str:
    from ..image import BaseImageError

    try:
        inspect_image(url, base.removeprefix("containers-storage:"))
    except BaseImageError:
        return f"answers at {url} (the base image is not in its store: see below)"
    return f"answers at {url}; the base image {base} is in its store"


def _check_python(base: str, podman_url: str, insecure: bool | None, timeout: float) -> str:
    from ..image import scan_environment

    env = scan_environment()
    if is_local_reference(base):
        image = BaseImage.from_podman(base, podman_url)
    else:
        source = Registry(split_reference(base)[0], insecure=insecure, timeout=timeout)
        try:
            image = BaseImage.from_registry(base, source, owns_registry=True)
        except BaseException:
            source.close()
            raise
    with image:
        python = image.python(env.python)  # raises PythonMismatchError
    return (
        f"{base} has Python {python.version} ({python.path}), as this environment "
        f"({env.python[0]}.{env.python[1]})"
    )


def check_image(report: Report, args: argparse.Namespace, timeout: float, deadline: float) -> bool:
    """Check what the workers' image needs; True when pods have an image to run."""
    from ..image import default_base_image

    image = args.image
    if image and image != "auto":
        why = f"image {image}: pods run it as is, nothing is built here"
        for name in ("registry", "podman", "base Python"):
            report.skip(name, why)
        return True
    if not args.registry:
        report.fail(
            "registry",
            "not set: your environment is copied into an image pushed there, which the "
            "nodes pull; set K8S_EXECUTOR_REGISTRY (registry= in code, --registry here) to "
            "host[:port]/namespace, e.g. ghcr.io/ORG (the quickstart shows a local one), "
            "or name an image that has your environment with K8S_EXECUTOR_IMAGE (image=, "
            "--image)",
        )
        report.skip("podman", "no registry: no image is built here")
        report.skip("base Python", "no registry: no image is built here")
        return False
    registry_ok = report.run(
        "registry", lambda: _check_registry(args.registry, args.repository, timeout), deadline
    )
    base = args.base_image or default_base_image()
    podman_url = args.podman_url or default_podman_url()
    host, _, insecure = _registry_parts(args.registry, args.repository)
    if is_local_reference(base):
        podman_ok = report.run("podman", lambda: _check_podman(podman_url, base), deadline)
        if not podman_ok:
            report.skip("base Python", f"podman is needed to read {base}")
            return False
    else:
        report.skip("podman", f"not needed: the base image {base} is in a registry")
        if split_reference(base)[0] == host and not registry_ok:
            report.skip("base Python", f"the registry holding {base} failed its check")
            return False
    # No deadline: the first time, the base image's layers are listed (then cached).
    python_ok = report.run(
        "base Python", lambda: _check_python(base, podman_url, insecure, timeout), None
    )
    return python_ok and registry_ok
