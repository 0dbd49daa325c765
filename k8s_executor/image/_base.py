"""The base image: where it comes from, what Python it has, and copying its layers.

A base image is either in a registry (``python:3.11-slim``, ``ghcr.io/org/base:1``) or in
the local podman store (``localhost/...``, e.g. the one ``.ci/containers.sh`` builds).
Either way the environment image is assembled in the target registry: the base's layers
are copied there once (blob by blob, skipped when present) and referenced by the new
manifest, so nothing is ever pulled by the builder after the first time.

Which Python the base has is read from its files (the layer listings), not from a
container run, so it works the same for both sources and needs no container runtime;
the answer is cached by the base's digest.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from ._cache import cache_dir, load_json, store_json
from ._errors import BaseImageError, PythonMismatchError, RegistryError
from ._layers import HashingWriter
from ._platform import Libc
from ._registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Registry,
    split_reference,
)

__all__ = ["BaseImage", "BaseLayer", "BasePython", "is_local_reference"]

# Docker media types and their OCI equivalents: the same bytes, so the same digest.
_OCI_LAYER_TYPE = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INTERPRETER = re.compile(r"^(?:\./)?((?:usr/local/|usr/)?bin)/python(\d+)\.(\d+)$")
_GLIBC = re.compile(r"^(?:usr/)?lib(?:64)?/(?:[a-z0-9_]+-linux-gnu/)?libc\.so\.6$")
_GLIBC_VERSIONED = re.compile(
    r"^(?:usr/)?lib(?:64)?/(?:[a-z0-9_]+-linux-gnu/)?libc-(\d+)\.(\d+)\.so$"
)
_MUSL_LOADER = re.compile(r"^(?:usr/)?lib/ld-musl-[a-z0-9_]+\.so\.1$")
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


def is_local_reference(reference: str) -> bool:
    """References podman keeps locally: ``localhost/...`` or ``containers-storage:...``."""
    return reference.startswith(("localhost/", "containers-storage:"))


@dataclass(frozen=True)
class BaseLayer:
    """One layer of the base image; the blob fields are known for registry bases."""

    diff_id: str
    digest: str | None = None
    size: int | None = None
    media_type: str | None = None

    def descriptor(self) -> dict[str, Any]:
        assert self.digest is not None
        assert self.size is not None
        assert self.media_type is not None
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BasePython:
    """The interpreter the venv's ``bin/python`` links to in the image."""

    path: str
    version: str
    """``3.11`` or, when the image says so (``PYTHON_VERSION``), ``3.11.9``."""

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)


@dataclass
class BaseImage:
    """A resolved base image (see the module docstring)."""

    reference: str
    source: Literal["registry", "podman"]
    digest: str
    """Identity for the fingerprint: manifest digest, or podman's image id."""
    config: dict[str, Any]
    """OCI image config (``architecture``, ``os``, ``config``, ``rootfs``)."""
    layers: list[BaseLayer]
    registry: Registry | None = None
    repo: str = ""
    podman_url: str | None = None
    owns_registry: bool = False
    """Close ``registry`` with this object (it was opened for the base alone)."""
    _archive: Path | None = field(default=None, repr=False)

    # --- resolving -------------------------------------------------------------------------

    @classmethod
    def from_registry(
        cls,
        reference: str,
        registry: Registry,
        *,
        os: str = "linux",
        arch: str = "amd64",
        owns_registry: bool = False,
    ) -> BaseImage:
        """Resolve ``reference`` in ``registry`` (picking ``os/arch`` from an index)."""
        _, repo, ref = split_reference(reference)
        try:
            manifest, media_type, digest = registry.get_manifest(repo, ref)
        except RegistryError as exc:
            if "does not exist" in str(exc):
                raise BaseImageError(
                    f"the base image {reference} does not exist: check base_image="
                ) from exc
            raise
        if media_type in (OCI_INDEX, DOCKER_LIST):
            for m in manifest.get("manifests", []):
                plat = m.get("platform", {})
                if plat.get("os") == os and plat.get("architecture") == arch:
                    manifest, media_type, digest = registry.get_manifest(repo, m["digest"])
                    break
            else:
                raise BaseImageError(f"the base image {reference} has no {os}/{arch} variant")
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise BaseImageError(f"the base image {reference} has an unsupported {media_type}")
        config = registry.get_json_blob(repo, manifest["config"]["digest"])
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        blobs = manifest.get("layers", [])
        if len(diff_ids) != len(blobs):
            raise BaseImageError(f"the base image {reference}: layers and diff_ids differ")
        layers = [
            BaseLayer(
                diff_id,
                blob["digest"],
                blob["size"],
                _OCI_LAYER_TYPE.get(blob["mediaType"], blob["mediaType"]),
            )
            for diff_id, blob in zip(diff_ids, blobs, strict=True)
        ]
        return cls(
            reference,
            "registry",
            digest,
            config,
            layers,
            registry=registry,
            repo=repo,
            owns_registry=owns_registry,
        )

    @classmethod
    def from_podman(cls, reference: str, podman_url: str) -> BaseImage:
        """Resolve ``reference`` in the local podman store (through its REST service)."""
        from ._podman import inspect_image

        attrs = inspect_image(podman_url, reference.removeprefix("containers-storage:"))
        cfg = attrs.get("Config") or {}
        config = {
            "architecture": attrs.get("Architecture") or "amd64",
            "os": attrs.get("Os") or "linux",
            "config": {
                k: cfg[k]
                for k in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels")
                if cfg.get(k)
            },
            "rootfs": {"type": "layers", "diff_ids": list(attrs["RootFS"]["Layers"])},
        }
        image_id = str(attrs["Id"])
        digest = image_id if ":" in image_id else f"sha256:{image_id}"
        layers = [BaseLayer(str(d)) for d in attrs["RootFS"]["Layers"]]
        return cls(reference, "podman", digest, config, layers, podman_url=podman_url)

    # --- facts ---------------------------------------------------------------------------

    def env(self) -> list[str]:
        env = self.config.get("config", {}).get("Env") or []
        return [str(e) for e in env]

    def python(self, local: tuple[int, int]) -> BasePython:
        """The base's interpreter for a venv of Python ``local`` (major, minor), from the
        cache or by listing the layers' files.

        Raises:
            PythonMismatchError: The base has no Python ``local``.
        """
        candidates = self._facts(need_libc=False)["candidates"]
        typed = [(str(p), int(a), int(b)) for p, a, b in candidates]
        return _pick(self.reference, self.env(), typed, local)

    def libc(self) -> Libc | None:
        """The base's C library (glibc with its version, or musl), from its files: which
        manylinux wheels can load there. None when no libc was recognised."""
        found = self._facts(need_libc=True)["libc"]
        if not found:
            return None
        kind, major, minor = found
        return Libc(str(kind), (int(major), int(minor)))

    def platform(self) -> str:
        """``os/architecture`` from the image config (``linux/amd64``)."""
        arch = str(self.config.get("architecture") or "amd64")
        return f"{self.config.get('os') or 'linux'}/{_ARCH_ALIASES.get(arch, arch)}"

    def _facts(self, *, need_libc: bool) -> dict[str, Any]:
        """What listing the layers tells: interpreters, and the libc (cached by digest;
        older cache entries lack the libc, which is looked for when needed)."""
        cached_path = cache_dir() / "base" / f"{self.digest.replace(':', '-')}.json"
        cached = load_json(cached_path)
        if (
            isinstance(cached, dict)
            and "candidates" in cached
            and (not need_libc or "libc" in cached)
        ):
            return cached
        candidates, libc = self._list_files()
        facts = {"candidates": sorted(candidates), "libc": libc}
        store_json(cached_path, facts)
        return facts

    def _list_files(self) -> tuple[set[tuple[str, int, int]], list[object] | None]:
        found: set[tuple[str, int, int]] = set()
        libc: list[object] | None = None
        for i in range(len(self.layers)):
            with self._open_layer(i) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    m = _INTERPRETER.match(member.name)
                    if m and (member.isfile() or member.issym() or member.islnk()):
                        found.add(("/" + m.group(0).lstrip("./"), int(m[2]), int(m[3])))
                        continue
                    libc = _libc_of(tar, member) or libc
        return found, libc

    # --- layers into the target registry ---------------------------------------------------

    def copy_layers(
        self, target: Registry, repo: str, compression: Literal["gzip", "none"]
    ) -> tuple[list[dict[str, Any]], int, int]:
        """Make every base layer present in ``target``/``repo``.

        Returns:
            (layer descriptors, blobs uploaded, bytes uploaded).
        """
        descriptors: list[dict[str, Any]] = []
        pushed = pushed_bytes = 0
        for i in range(len(self.layers)):
            if self.source == "podman":
                descriptor, uploaded = self._copy_podman_layer(i, target, repo, compression)
            else:
                descriptor, uploaded = self._copy_registry_layer(i, target, repo)
            descriptors.append(descriptor)
            pushed += uploaded > 0
            pushed_bytes += uploaded
        return descriptors, pushed, pushed_bytes

    def _copy_registry_layer(
        self, index: int, target: Registry, repo: str
    ) -> tuple[dict[str, Any], int]:
        layer = self.layers[index]
        assert self.registry is not None
        assert layer.digest is not None
        assert layer.size is not None
        if target.blob_exists(repo, layer.digest):
            return layer.descriptor(), 0
        source, source_repo, digest, size = self.registry, self.repo, layer.digest, layer.size

        def open_body() -> IO[bytes]:
            response = source.get_blob(source_repo, digest)
            response.raw.decode_content = False  # the blob's bytes, not gunzipped
            return _ResponseBody(response, size)  # type: ignore[return-value]

        target.upload_blob(repo, digest, layer.size, open_body)
        return layer.descriptor(), layer.size

    def _copy_podman_layer(
        self, index: int, target: Registry, repo: str, compression: Literal["gzip", "none"]
    ) -> tuple[dict[str, Any], int]:
        """A podman base layer has no registry blob yet: make one (once per diff_id and
        compression, remembered in the cache) unless the target already has it."""
        layer = self.layers[index]
        name = f"{layer.diff_id.replace(':', '-')}-{compression}.json"
        cache_key = cache_dir() / "base-blobs" / name
        cached = load_json(cache_key)
        if isinstance(cached, dict) and target.blob_exists(repo, str(cached["digest"])):
            return BaseLayer(layer.diff_id, **cached).descriptor(), 0
        blob, path = self._materialize(index, compression)
        assert blob.digest is not None
        assert blob.size is not None
        store_json(
            cache_key, {"digest": blob.digest, "size": blob.size, "media_type": blob.media_type}
        )
        if target.blob_exists(repo, blob.digest):
            return blob.descriptor(), 0

        def open_file() -> IO[bytes]:
            return open(path, "rb")

        target.upload_blob(repo, blob.digest, blob.size, open_file)
        return blob.descriptor(), blob.size

    def __enter__(self) -> BaseImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_layer_tar(self, index: int, path: Path) -> None:
        """Write one base layer, uncompressed, to ``path`` (for a docker-archive)."""
        with self._open_layer(index) as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)

    def close(self) -> None:
        """Remove the temporary export of a podman base; close a registry session of ours."""
        if self.owns_registry and self.registry is not None:
            self.registry.close()
        if self._archive is not None:
            shutil.rmtree(self._archive.parent, ignore_errors=True)
            self._archive = None

    # --- podman bases: blobs from an exported archive ---------------------------------------

    def _materialize(
        self, index: int, compression: Literal["gzip", "none"]
    ) -> tuple[BaseLayer, Path]:
        """Write one layer of a podman base as a registry blob: the uncompressed tar (its
        digest is the diff_id) or a reproducible gzip of it."""
        layer = self.layers[index]
        directory = self._export().parent
        path = directory / f"layer-{index}.{'tar.gz' if compression == 'gzip' else 'tar'}"
        with self._open_layer(index) as src, open(path, "wb") as out:
            blob = HashingWriter(out)
            if compression == "gzip":
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=1
                ) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            else:
                shutil.copyfileobj(src, blob, 1 << 20)
        media = "application/vnd.oci.image.layer.v1.tar" + (
            "+gzip" if compression == "gzip" else ""
        )
        return BaseLayer(layer.diff_id, f"sha256:{blob.hexdigest()}", blob.size, media), path

    def _export(self) -> Path:
        if self._archive is None:
            from ._podman import save_image

            directory = Path(tempfile.mkdtemp(prefix="k8sx-base-"))
            self._archive = directory / "image.tar"
            save_image(self.podman_url or "", self.digest, self._archive)
        return self._archive

    @contextmanager
    def _open_layer(self, index: int) -> Iterator[IO[bytes]]:
        """The uncompressed tar stream of one layer (gzip blobs are decompressed)."""
        if self.source == "registry":
            assert self.registry is not None
            layer = self.layers[index]
            assert layer.digest is not None
            with self.registry.get_blob(self.repo, layer.digest) as response:
                response.raw.decode_content = True
                stream: IO[bytes] = response.raw
                if (layer.media_type or "").endswith("gzip"):
                    with gzip.GzipFile(fileobj=stream) as gz:
                        yield gz  # type: ignore[misc]
                else:
                    yield stream
            return
        archive = self._export()
        with tarfile.open(archive) as tar:
            manifest = json.load(_extract(tar, "manifest.json"))
            member = _extract(tar, manifest[0]["Layers"][index])
            yield member


class _ResponseBody:
    """A streaming HTTP response body as a file object ``requests`` can upload.

    ``__len__`` makes requests send a Content-Length instead of chunked encoding (which
    the registry's PUT does not accept); ``__iter__`` makes it stream instead of buffer.
    """

    def __init__(self, response: Any, size: int) -> None:
        self._response = response
        self._size = size

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._response.raw.read(None if size < 0 else size)
        return data

    def __iter__(self) -> Iterator[bytes]:
        return self._response.raw.stream(1 << 20, decode_content=False)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._response.close()


def _libc_of(tar: tarfile.TarFile, member: tarfile.TarInfo) -> list[object] | None:
    """``["glibc", 2, 36]`` or ``["musl", 1, 2]`` when ``member`` tells the libc version."""
    name = member.name.removeprefix("./")
    if _MUSL_LOADER.match(name):
        return ["musl", 1, 2]  # every musl of the last years; musllinux_1_1 wheels load too
    m = _GLIBC_VERSIONED.match(name)  # older glibc: libc-2.31.so
    if m and (member.isfile() or member.issym()):
        return ["glibc", int(m[1]), int(m[2])]
    if _GLIBC.match(name) and member.isfile() and member.size < 64 * 1024 * 1024:
        f = tar.extractfile(member)
        data = f.read() if f is not None else b""
        v = re.search(rb"GNU C Library [^\n]*?release version (\d+)\.(\d+)", data)
        if v:
            return ["glibc", int(v[1]), int(v[2])]
    return None


def _extract(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    f = tar.extractfile(name)
    if f is None:
        raise BaseImageError(f"the exported base image has no file {name}")
    return f


def _pick(
    reference: str, env: list[str], candidates: list[tuple[str, int, int]], local: tuple[int, int]
) -> BasePython:
    """The interpreter found first along the image's PATH, with the local major.minor."""
    path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), _DEFAULT_PATH)
    order = {d.strip("/"): i for i, d in enumerate(path.split(":"))}
    matching = [c for c in candidates if (c[1], c[2]) == local]
    if not matching:
        found = ", ".join(f"{p} ({a}.{b})" for p, a, b in candidates) or "no python3.X at all"
        raise PythonMismatchError(
            f"the base image {reference} has no Python {local[0]}.{local[1]} (found: {found}); "
            f"the local environment runs {local[0]}.{local[1]}, and functions pickled here only "
            f"load in the same major.minor. Pass base_image= an image with Python "
            f"{local[0]}.{local[1]} (e.g. python:{local[0]}.{local[1]}-slim), or run from a venv "
            "whose Python matches the base image"
        )
    matching.sort(key=lambda c: (order.get(c[0].rsplit("/", 1)[0].strip("/"), 99), c[0]))
    best = matching[0]
    version = f"{best[1]}.{best[2]}"
    for e in env:
        if e.startswith("PYTHON_VERSION=") and e.split("=", 1)[1].startswith(version + "."):
            version = e.split("=", 1)[1]
    return BasePython(best[0], version)
