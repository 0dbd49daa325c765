"""kubesim: an in-process Kubernetes control plane used as test infrastructure.

The ``Kubesim`` handle is defined in :mod:`tests.kubesim.kubeconfig` and re-exported lazily here
so that importing the store alone stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.kubesim.kubeconfig import Kubesim

__all__ = ["Kubesim"]


def __getattr__(name: str) -> Any:
    if name == "Kubesim":
        from tests.kubesim.kubeconfig import Kubesim

        return Kubesim
    raise AttributeError(name)
