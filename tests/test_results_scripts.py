"""The scripts under results/ that rebuild a table the docs cite run on their committed runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent.parent / "results"


def test_the_new_models_table_rebuilds_from_its_runs():
    done = subprocess.run([sys.executable, str(RESULTS / "new-models" / "table.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in (RESULTS / "new-models" / "README.md").read_text()
