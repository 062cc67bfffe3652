"""What other processes did to the CPU while a benchmark timed something: shared by the
benchmarks that run on a machine other work shares (imported as a sibling module, which works
because `python benchmarks/NAME.py` puts this folder first on sys.path)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional


class OtherCpu:
    """CPU used by other processes since creation, in cores: the machine's busy time (/proc/stat)
    less this process's. On a shared machine it says how much a figure was disturbed."""

    def __init__(self):
        self._start = self._read()

    @staticmethod
    def _read():
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        return busy, time.process_time(), time.perf_counter()

    def share(self) -> Optional[float]:
        end = self._read()
        if end is None or self._start is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self._start, end
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)
