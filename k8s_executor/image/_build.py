"""``build_image``: the running venv as an image in a registry, built only when it changed.

The pipeline, in which every arrow is skipped when its result already exists::

    fingerprint ──▶ HEAD <repo>:env-<fp> ──exists──▶ ImageRef (nothing else done)
        │ missing
        ▼
    base image ──▶ copy its layers to the target (once per registry)
    plan layers ──▶ per layer: cache key ──known digest present?──▶ reuse
                                  │ otherwise
                                  ▼
                         write tar(.gz) ──▶ upload blob (skipped when present)
        ▼
    config + manifest ──▶ PUT <repo>:env-<fp> ──▶ ImageRef (by digest)

For another platform than this machine's (``platform=``), the base image's variant for it
is used, and before planning the layers the platform-specific packages are installed for
it by pip (``_cross.py``); their files replace the local ones in the plan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

from ..errors import ConfigError
from ._base import BaseImage, is_local_reference
from ._cache import cache_dir, load_json, store_json
from ._cross import Staged, Target, prepare
from ._errors import BaseImageError, ImageError
from ._fingerprint import LAYOUT_VERSION, fingerprint
from ._layers import EPOCH, Compression, LayerBlob, LayerPlan, plan_layers, write_layer
from ._platform import Libc, check_platform, default_platform, local_platform
from ._podman import default_podman_url
from ._registry import OCI_MANIFEST, Registry, is_loopback, split_reference
from ._scan import Environment, scan_environment

__all__ = ["ImageRef", "build_image", "default_base_image"]

_log = logging.getLogger(__name__)
_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
_LABEL = "io.github.k8s-executor"


@dataclass(frozen=True)
class ImageRef:
    """The result of :func:`build_image`."""

    reference: str
    """``registry/repository@sha256:…``: what a Job should run (immutable)."""
    tag: str
    """``registry/repository:env-<fingerprint>``."""
    fingerprint: str
    built: bool
    """False when the registry already had this environment (nothing was done)."""
    layers_pushed: int
    layers_reused: int
    bytes_pushed: int
    seconds: float
    platform: str = ""
    """The platform the image is for (``linux/amd64``)."""

    @property
    def digest(self) -> str:
        """The manifest digest (``sha256:…``)."""
        return self.reference.rsplit("@", 1)[1]

    def summary(self) -> str:
        """One line for humans (the ``k8s-executor build`` output)."""
        # The platform only when it is not this machine's: the usual line stays as it was.
        other = f"for {self.platform}; " if self.platform not in ("", local_platform()) else ""
        if not self.built:
            return f"{self.reference} ({other}unchanged environment: nothing built or pushed)"
        return (
            f"{self.reference} ({other}{self.layers_pushed} layers pushed, "
            f"{self.bytes_pushed / 1e6:.1f} MB; {self.layers_reused} reused; "
            f"{self.seconds:.1f}s)"
        )


def default_base_image() -> str:
    """The official slim image of the local Python major.minor (from Docker Hub)."""
    return "docker.io/library/python:{}.{}-slim".format(*sys.version_info[:2])


def build_image(
    registry: str,
    *,
    repository: str = "k8s-executor-env",
    base_image: str | None = None,
    prefix: str | os.PathLike[str] | None = None,
    insecure: bool | None = None,
    compression: Compression = "gzip",
    podman_url: str | None = None,
    method: Literal["oci", "podman"] | None = None,
    platform: str | None = None,
) -> ImageRef:
    """Make sure ``registry`` has an image of the local virtual environment.

    The venv (default: the running one) is put, at its own absolute path, on top of
    ``base_image``; its ``bin/python`` runs the base image's interpreter. Nothing is built
    when the registry already has the environment's fingerprint as a tag; otherwise only
    the layers that changed are written and uploaded.

    Args:
        registry: Where the image goes: ``host[:port][/namespace]`` (an ``http://``
            prefix means ``insecure=True``; ``https://`` is the default anyway).
        repository: Repository name under ``registry``.
        base_image: An image with the same Python major.minor as the venv. A registry
            reference, or a podman-local one (``localhost/...``). Default:
            :func:`default_base_image`.
        prefix: The virtual environment; default ``sys.prefix``.
        insecure: Talk plain HTTP to the registries; default: only to loopback ones.
        compression: ``"gzip"`` (smaller, for remote registries) or ``"none"`` (faster
            on a local network).
        podman_url: podman's REST service (only used for podman-local base images and
            ``method="podman"``); default ``CONTAINER_HOST`` or the standard socket.
        method: ``"oci"`` uploads layers to the registry directly (fast, incremental);
            ``"podman"`` loads the image into podman and lets podman push it, for
            registries only podman's configuration reaches (mirrors, ``certs.d``,
            credential helpers). Default: ``K8S_EXECUTOR_IMAGE_PUSH``, else ``"oci"``.
        platform: The cluster nodes' ``os/arch``: ``"linux/amd64"`` or
            ``"linux/arm64"``. Default: this machine's on Linux, else ``"linux/amd64"``.
            When it differs from this machine's, the platform-specific packages are
            installed for it by pip (with your pip configuration) instead of copied, and
            the base image's variant for it is used (see docs/images.md, "Platforms").

    Returns:
        The image reference by digest, and what was pushed.

    Raises:
        ImageError: With the cause and the fix: podman missing or not running, registry
            unreachable or refusing our credentials, base image missing or with another
            Python or platform, venv not snapshottable, packages that cannot be had for
            another platform (:class:`PlatformError`).
        ConfigError: ``platform`` is not one of those allowed.
    """
    if compression not in ("gzip", "none"):
        raise ValueError(f"compression must be 'gzip' or 'none', not {compression!r}")
    # An environment variable too, so the executor's image="auto" and `k8s-executor build`
    # can be switched to podman without a code change.
    push = method or os.environ.get("K8S_EXECUTOR_IMAGE_PUSH") or "oci"
    if push not in ("oci", "podman"):
        if method is not None:
            raise ValueError(f"method must be 'oci' or 'podman', not {method!r}")
        raise ConfigError(
            f"K8S_EXECUTOR_IMAGE_PUSH={push!r} is not allowed: expected 'oci' (upload "
            "layers to the registry directly) or 'podman' (load into podman, podman pushes)"
        )
    target_platform = check_platform(platform) or default_platform()
    cross = target_platform != local_platform()
    started = time.perf_counter()
    if registry.startswith("http://"):
        insecure = True if insecure is None else insecure
    registry = registry.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, _, namespace = registry.partition("/")
    repo = f"{namespace}/{repository}" if namespace else repository
    env = scan_environment(prefix)
    podman = podman_url or default_podman_url()

    with (
        Registry(host, insecure=insecure) as target,
        _resolve_base(
            base_image or default_base_image(), target, podman, insecure, target_platform
        ) as base,
    ):
        # Same platform: the local platform tag, as always (same fingerprints and digests
        # as before platform= existed). Another one: the target, whatever the machine
        # building it (a Mac on arm64 or on x86_64 give the same image).
        fp = fingerprint(
            env, base_digest=base.digest, platform=f"cross/{target_platform}" if cross else None
        )
        job = _Job(target, repo, f"env-{fp}", fp, base, env.prefix, compression)
        existing = target.manifest_digest(repo, job.tag)
        if existing is not None:
            _log.info("%s/%s:%s exists: nothing to build", host, repo, job.tag)
            pushed = _Pushed(existing, 0, 0, 0)
        else:
            python = base.python(env.python)  # raises PythonMismatchError
            staged = _stage(env, base, target_platform) if cross else None
            plans = plan_layers(
                env, base_python=python.path, base_python_version=python.version, staged=staged
            )
            _log.info(
                "building %s/%s:%s: %d layers on %s (Python %s at %s)",
                host,
                repo,
                job.tag,
                len(plans),
                base.reference,
                python.version,
                python.path,
            )
            if push == "podman":
                pushed = _push_with_podman(job, plans, python.version, podman, insecure)
            else:
                pushed = _push_directly(job, plans, python.version)
    return ImageRef(
        f"{host}/{repo}@{pushed.digest}",
        f"{host}/{repo}:{job.tag}",
        fp,
        built=existing is None,
        layers_pushed=pushed.layers,
        layers_reused=pushed.reused,
        bytes_pushed=pushed.bytes,
        seconds=time.perf_counter() - started,
        platform=target_platform,
    )


_FALLBACK_LIBC = Libc("glibc", (2, 28))
"""When the base's libc is not recognised: what current wheels (numpy's) target."""


def _stage(env: Environment, base: BaseImage, platform: str) -> Staged:
    """The platform-specific distributions, installed for ``platform`` (see _cross.py)."""
    libc = base.libc()
    if libc is None:
        _log.warning(
            "no libc recognised in the base image %s: resolving wheels for %s",
            base.reference,
            _FALLBACK_LIBC,
        )
        libc = _FALLBACK_LIBC
    return prepare(env, Target(platform, env.python, libc, env.prefix))


@dataclass(frozen=True)
class _Job:
    """What every push path needs to know."""

    target: Registry
    repo: str
    tag: str
    fingerprint: str
    base: BaseImage
    prefix: Path
    compression: Compression


@dataclass(frozen=True)
class _Pushed:
    digest: str
    layers: int
    reused: int
    bytes: int


def _push_directly(job: _Job, plans: list[LayerPlan], python_version: str) -> _Pushed:
    """The default path: blobs the registry lacks, then config and manifest."""
    target, repo = job.target, job.repo
    base_layers, base_pushed, base_bytes = job.base.copy_layers(target, repo, job.compression)
    blobs, pushed, pushed_bytes, reused = _push_layers(target, repo, plans, job.compression)
    config_body = _canonical(_image_config(job, blobs, python_version))
    config_digest = _sha256(config_body)
    if not target.blob_exists(repo, config_digest):
        target.upload_blob(repo, config_digest, len(config_body), lambda: config_body)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": _CONFIG_TYPE, "digest": config_digest, "size": len(config_body)},
        "layers": base_layers
        + [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs],
    }
    digest = target.put_manifest(repo, job.tag, _canonical(manifest), OCI_MANIFEST)
    return _Pushed(
        digest,
        layers=base_pushed + pushed,
        reused=reused + len(base_layers) - base_pushed,
        bytes=base_bytes + pushed_bytes,
    )


def _resolve_base(
    reference: str, target: Registry, podman_url: str, insecure: bool | None, platform: str
) -> BaseImage:
    """The base image for ``platform`` (its variant, when ``reference`` is an index).

    Raises:
        BaseImageError: The base is for another platform.
    """
    if is_local_reference(reference):
        base = BaseImage.from_podman(reference, podman_url)
    else:
        host, _, _ = split_reference(reference)
        os_name, arch = platform.split("/", 1)
        if host == target.host:
            base = BaseImage.from_registry(reference, target, os=os_name, arch=arch)
        else:
            # Another registry: its own session (and credentials), closed by base.close().
            source = Registry(host, insecure=insecure)
            try:
                base = BaseImage.from_registry(
                    reference, source, os=os_name, arch=arch, owns_registry=True
                )
            except BaseException:
                source.close()
                raise
    if base.platform() != platform:
        base.close()
        raise BaseImageError(
            f"the base image {reference} is for {base.platform()}, and the image is built for "
            f"{platform}: pass base_image= an image for {platform} (or a multi-platform one, "
            "such as python:X.Y-slim), or platform= the cluster's platform if it is "
            f"{base.platform()}"
        )
    return base


def _push_layers(
    target: Registry, repo: str, plans: list[LayerPlan], compression: Compression
) -> tuple[list[LayerBlob], int, int, int]:
    """Upload the layers the registry lacks. Returns (blobs, pushed, bytes, reused)."""
    cache = cache_dir() / "layers"

    def ensure(plan: LayerPlan) -> tuple[LayerBlob, int]:
        """The layer's blob, and the bytes uploaded for it (0: it was there)."""
        key = cache / f"{plan.cache_key(compression)}.json"
        known = load_json(key)
        if isinstance(known, dict):
            blob = LayerBlob(**known)
            if target.blob_exists(repo, blob.digest):
                return blob, 0  # unchanged and present: not even written
        fd, tmp = tempfile.mkstemp(prefix="k8sx-layer-", suffix=".tar")
        try:
            with os.fdopen(fd, "wb") as out:
                blob = write_layer(plan, out, compression)
            store_json(key, asdict(blob))
            if target.blob_exists(repo, blob.digest):
                return blob, 0

            def open_tmp() -> IO[bytes]:
                return open(tmp, "rb")

            _log.info("uploading layer %s (%.1f MB)", plan.name, blob.size / 1e6)
            target.upload_blob(repo, blob.digest, blob.size, open_tmp)
            return blob, blob.size
        finally:
            Path(tmp).unlink(missing_ok=True)

    # In parallel: hashing, gzip and socket I/O release the GIL (a cold build uses both
    # cores), and a remote registry answers the existence checks concurrently.
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(ensure, plans))
    pushed = sum(1 for _, n in results if n)
    return [b for b, _ in results], pushed, sum(n for _, n in results), len(plans) - pushed


def _image_config(job: _Job, blobs: list[LayerBlob], python_version: str) -> dict[str, Any]:
    """The OCI image config: the base's, with the venv first on PATH and our labels."""
    base, prefix = job.base, job.prefix
    base_config = dict(base.config.get("config", {}))
    env = [e for e in base.env() if not e.startswith(("PATH=", "VIRTUAL_ENV="))]
    path = next((e[5:] for e in base.env() if e.startswith("PATH=")), None)
    path = path or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    labels = dict(base_config.get("Labels") or {})
    labels.update(
        {
            f"{_LABEL}.fingerprint": job.fingerprint,
            f"{_LABEL}.layout": str(LAYOUT_VERSION),
            f"{_LABEL}.venv": str(prefix),
            f"{_LABEL}.python": python_version,
            f"{_LABEL}.base": base.reference,
        }
    )
    config: dict[str, Any] = {
        "Env": [f"PATH={prefix}/bin:{path}", f"VIRTUAL_ENV={prefix}", *env],
        "Cmd": [f"{prefix}/bin/python"],
        "WorkingDir": base_config.get("WorkingDir") or "/",
        "Labels": labels,
    }
    if base_config.get("User"):
        config["User"] = base_config["User"]
    return {
        # A fixed date: the same environment must give the same config, hence digest.
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH)),
        "architecture": base.config.get("architecture", "amd64"),
        **({"variant": base.config["variant"]} if base.config.get("variant") else {}),
        "os": base.config.get("os", "linux"),
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": [lay.diff_id for lay in base.layers] + [b.diff_id for b in blobs],
        },
    }


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _push_with_podman(
    job: _Job, plans: list[LayerPlan], python_version: str, podman_url: str, insecure: bool | None
) -> _Pushed:
    """The podman path: a docker-archive (every layer uncompressed, base included) loaded
    into podman and pushed by it; "bytes" is the archive handed to podman.

    Slower than uploading blobs directly (every layer is written, loaded, then compressed
    and pushed by podman, which re-checks each one); kept for registries only podman
    knows how to reach (its registries.conf mirrors, certs.d, credential helpers).
    """
    from ._podman import load_and_push

    host = job.target.host
    reference = f"{host}/{job.repo}:{job.tag}"
    with tempfile.TemporaryDirectory(prefix="k8sx-podman-") as tmp:
        directory = Path(tmp)
        names: list[str] = []
        for i in range(len(job.base.layers)):
            names.append(f"base-{i}.tar")
            job.base.write_layer_tar(i, directory / names[-1])
        blobs: list[LayerBlob] = []
        for plan in plans:
            names.append(f"{plan.name}.tar")
            with open(directory / names[-1], "wb") as out:
                blobs.append(write_layer(plan, out, "none"))
        config = _image_config(job, blobs, python_version)
        (directory / "config.json").write_bytes(_canonical(config))
        manifest = [{"Config": "config.json", "RepoTags": [reference], "Layers": names}]
        (directory / "manifest.json").write_bytes(_canonical(manifest))
        archive = directory / "image.tar"
        with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
            for name in ["manifest.json", "config.json", *names]:
                tar.add(directory / name, arcname=name)
                if name.endswith(".tar"):
                    (directory / name).unlink()  # halve the disk space needed
        size = archive.stat().st_size
        tls_verify = not (is_loopback(host) if insecure is None else insecure)
        with open(archive, "rb") as f:
            load_and_push(podman_url, f, reference, tls_verify=tls_verify)
    digest = job.target.manifest_digest(job.repo, job.tag)
    if digest is None:
        raise ImageError(f"podman reported pushing {reference}, but the registry lacks it")
    return _Pushed(digest, layers=len(names), reused=0, bytes=size)
