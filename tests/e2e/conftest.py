"""pytest setup for the end-to-end tests.

Every test's scratch directories (tracepipe configs, logs, archives, peer state) are made with
`tempfile.mkdtemp`, so they all land under one directory per run. The run removes it when every
test passed and keeps it (and says where) when one failed, so the logs can be read; repeated runs
no longer fill /tmp.
"""

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

_RUN_DIR = Path(tempfile.mkdtemp(prefix="tracepipe-e2e-"))
tempfile.tempdir = str(_RUN_DIR)


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        shutil.rmtree(_RUN_DIR, ignore_errors=True)
    else:
        sys.stderr.write(f"\ntracepipe e2e: scratch directories kept in {_RUN_DIR}\n")
