"""``python -m k8s_executor.cli``: the ``k8s-executor`` command."""

import sys

from . import main

sys.exit(main())
