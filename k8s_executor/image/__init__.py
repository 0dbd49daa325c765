"""The environment image: a snapshot of the local virtualenv, built and pushed on demand.

    >>> from k8s_executor.image import build_image
    >>> ref = build_image("registry.example.com/team")   # doctest: +SKIP
    >>> ref.reference                                    # doctest: +SKIP
    'registry.example.com/team/k8s-executor-env@sha256:…'

Importing this package does not import ``podman``: podman-py is loaded only when a build
needs podman (a base image in podman's store, or ``method="podman"``).
"""

from ._build import ImageRef, build_image, default_base_image
from ._errors import (
    BaseImageError,
    EnvironmentSnapshotError,
    ImageError,
    PlatformError,
    PodmanUnavailableError,
    PythonMismatchError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
)
from ._fingerprint import LAYOUT_VERSION, fingerprint, platform_tag
from ._platform import PLATFORMS, default_platform, local_platform
from ._scan import scan_environment

__all__ = [
    "LAYOUT_VERSION",
    "PLATFORMS",
    "BaseImageError",
    "EnvironmentSnapshotError",
    "ImageError",
    "ImageRef",
    "PlatformError",
    "PodmanUnavailableError",
    "PythonMismatchError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachableError",
    "build_image",
    "default_base_image",
    "default_platform",
    "fingerprint",
    "local_platform",
    "platform_tag",
    "scan_environment",
]
