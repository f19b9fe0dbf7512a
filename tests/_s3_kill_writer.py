"""Child process of the SIGKILL test: ``python _s3_kill_writer.py URL N_RUNS N_STEPS KILL_AT``.

Writes runs r000.. into the store at URL like ``tests/store/_crash_writer.py``, but sends itself
SIGKILL just before its ``KILL_AT``-th object PUT of a fragment (0 = never), so the kill lands at a
known point inside a commit: some fragments of a run are on the server, its marker is not.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "store"))

from _crash_writer import write_all  # noqa: E402

from trajlib.store._fs import RemoteRoot  # noqa: E402


def _arm(kill_at: int) -> None:
    put = RemoteRoot.put_atomic
    count = [0]

    def put_then_maybe_die(self, rel, data, owner, *, durable=True):  # noqa: ANN001, ANN202
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return put(self, rel, data, owner, durable=durable)

    RemoteRoot.put_atomic = put_then_maybe_die  # type: ignore[method-assign]


if __name__ == "__main__":
    url, n, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if kill_at:
        _arm(kill_at)
    write_all(url, n, steps)
