"""The system simulation's figures, one line at the end of the run whatever ``-s`` says."""

from __future__ import annotations

import sys
from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Only if the simulation ran in this session; importing it here would cost every run.
    world = sys.modules.get("tests.simulation.system_world")
    if world is None or not world.TOTALS["seeds"]:
        return
    terminalreporter.write_line(world.summary_line(world.TOTALS))
