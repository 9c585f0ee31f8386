"""Where a run keeps its journal when --journal is not given."""

from __future__ import annotations

import os
from pathlib import Path

from sms_blaster.run_parts import default_journal_path


def test_a_file_input_keeps_its_journal_next_to_it(tmp_path: Path) -> None:
    """`list.csv` → `list.csv.journal`, the documented default."""
    path = tmp_path / "list.csv"
    path.write_text("to\n")
    assert default_journal_path(str(path)) == f"{path}.journal"


def test_stdin_a_pipe_or_a_device_gets_no_default_journal(tmp_path: Path) -> None:
    """`send /dev/stdin` wrote its journal into /dev; a FIFO cannot be read again to resume."""
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    for path in ("-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", str(fifo)):
        assert default_journal_path(path) is None, path
