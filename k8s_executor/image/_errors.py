"""Errors of the image builder, in one module so that re-parenting them is one line.

ImageError
 ├── PodmanUnavailableError      podman is not installed, or its service is not running
 ├── RegistryError               the registry answered with an unexpected error
 │    ├── RegistryUnreachableError   nothing answers at the registry's address
 │    └── RegistryAuthError          the registry refused our credentials (or we had none)
 ├── BaseImageError              the base image is missing or unusable
 │    └── PythonMismatchError        its Python major.minor differs from the local one
 ├── EnvironmentSnapshotError    the local environment cannot be snapshotted
 └── PlatformError               the environment cannot be rebuilt for the cluster's
                                 platform (compiled local code, no wheel for the target)
"""

from __future__ import annotations

from ..errors import K8sExecutorError

__all__ = [
    "BaseImageError",
    "EnvironmentSnapshotError",
    "ImageError",
    "PlatformError",
    "PodmanUnavailableError",
    "PythonMismatchError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachableError",
]


class ImageError(K8sExecutorError):
    """Base class of every error raised while building or pushing the environment image."""


class PodmanUnavailableError(ImageError):
    """podman (or its REST service) is needed for this build and cannot be reached."""


class RegistryError(ImageError):
    """The registry answered a request with an error we cannot recover from."""


class RegistryUnreachableError(RegistryError):
    """No registry answers at the configured address."""


class RegistryAuthError(RegistryError):
    """The registry refused the request: no credentials, or the wrong ones."""


class BaseImageError(ImageError):
    """The base image cannot be found or inspected."""


class PythonMismatchError(BaseImageError):
    """The base image's Python major.minor differs from the local interpreter's."""


class EnvironmentSnapshotError(ImageError):
    """The local environment cannot be turned into an image (not a venv, unreadable files)."""


class PlatformError(ImageError):
    """The cluster's platform differs from this machine's, and the environment cannot be
    installed again for it: a local package has compiled code, a distribution has no wheel
    for the target, or pip (which resolves the target's wheels) is missing or failed."""
