"""``k8s-executor rbac`` and ``build``: what to prepare before a first run (the Role a
cluster admin grants, the environment image)."""

from __future__ import annotations

import argparse
import sys


def build(args: argparse.Namespace) -> int:
    """``k8s-executor build``: snapshot this virtualenv into an image, push it if changed."""
    if not args.registry:
        print(
            "k8s-executor build: --registry (or K8S_EXECUTOR_REGISTRY) is required", file=sys.stderr
        )
        return 2
    from ..image import build_image

    ref = build_image(
        args.registry,
        repository=args.repository,
        base_image=args.base_image,
        platform=args.platform,
        method=args.push,
    )
    print(ref.summary())
    return 0


def rbac(args: argparse.Namespace) -> int:
    """``k8s-executor rbac``: print the Role and RoleBinding the executor needs, as YAML."""
    import yaml

    from .._admin import rbac_manifests

    print(yaml.safe_dump_all(rbac_manifests(args.namespace, args.service_account), sort_keys=False))
    return 0
