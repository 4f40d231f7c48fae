"""pytest setup for the end-to-end tests.

Every test's scratch directories (tracepipe configs, logs, archives, peer state) are made with
`tempfile.mkdtemp`, so they all land under one directory per run. The run removes it when every
test passed and keeps it (and says where) when one failed, so the logs can be read; repeated runs
no longer fill /tmp.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import scratch_begin, scratch_end  # noqa: E402

_RUN_DIR = scratch_begin("tracepipe-e2e-")


def pytest_sessionfinish(session, exitstatus):
    scratch_end(_RUN_DIR, exitstatus == 0)
