"""The caption job's progress line: redrawn in place on a terminal, throttled plain lines in logs."""

from __future__ import annotations

import io

from jobs.caption import ProgressLine
from pipeline.batch.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_line_is_redrawn_in_place():
    stream = Terminal()
    line = ProgressLine(stream)
    line(Progress(rows_done=4, rows_total=10, errors=1, elapsed_s=2.0))
    line(Progress(rows_done=10, rows_total=10, errors=1, elapsed_s=4.0))
    line.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "4/10 rows, 1.50 images/s, 1 errors" in text and "10/10 rows, 2.25 images/s" in text


def test_log_lines_are_throttled_and_the_last_one_is_shown():
    stream = io.StringIO()
    line = ProgressLine(stream, every_s=3600)
    for done in range(1, 6):
        line(Progress(rows_done=done, rows_total=None, elapsed_s=float(done)))
    line.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["1/? rows, 1.00 images/s, 0 errors, 1 s", "5/? rows, 1.00 images/s, 0 errors, 5 s"]
    assert "\r" not in stream.getvalue()
