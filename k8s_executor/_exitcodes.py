"""The worker's exit codes, shared by the worker and the Job manifest's failure policy.

They sit in a range user code rarely passes to ``os._exit`` (3 or 7 would be plausible),
because the pod failure policy acts on them: a user's own exit code must not be taken
for "outcome written, do not retry" or, worse, "client gone, fail the whole Job".
"""

from typing import Final

OK: Final = 0
"""Every task succeeded; the outcome is written."""
TASK_FAILED: Final = 83
"""The outcome is written and some task raised: retrying would only repeat it."""
INDEX_FAILED: Final = 84
"""The index could not run at all (bad payload, version mismatch); a JSON failure is written."""
USAGE: Final = 85
"""The worker was invoked wrongly (missing index or key)."""
ORPHANED: Final = 86
"""Local backend: the client process that started the worker is gone."""
ABANDONED: Final = 87
"""The client's heartbeat stopped: the run is abandoned, its Job should fail."""

NOT_RETRIED: Final = (TASK_FAILED, INDEX_FAILED, USAGE)
