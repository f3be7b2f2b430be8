"""How far a running job is: the counters the driver hands to whoever watches it (a terminal
line, live MLflow metrics) after each batch of written rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Progress:
    """Cumulative counters of a running job.

    Attributes:
        rows_done: output rows written by this run (failed rows included).
        rows_total: rows this run set out to write; ``None`` while the input is still streaming.
        errors: rows written with an error.
        generated_tokens: tokens generated over the successful rows.
        visual_tokens: visual tokens kept over the successful rows.
        elapsed_s: seconds since the job started.
    """

    rows_done: int = 0
    rows_total: int | None = None
    errors: int = 0
    generated_tokens: int = 0
    visual_tokens: int = 0
    elapsed_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Successful rows per second so far."""
        return (self.rows_done - self.errors) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def visual_tokens_mean(self) -> float:
        ok = self.rows_done - self.errors
        return self.visual_tokens / ok if ok else 0.0

    def after(self, table: pa.Table, elapsed_s: float) -> Progress:
        """These counters with one more written batch of output rows (``OUTPUT_SCHEMA``)."""
        ok = table.filter(pc.is_null(table["error"]))
        return Progress(
            rows_done=self.rows_done + table.num_rows,
            rows_total=self.rows_total,
            errors=self.errors + table.num_rows - ok.num_rows,
            generated_tokens=self.generated_tokens + int(pc.sum(ok["generated_tokens"]).as_py() or 0),
            visual_tokens=self.visual_tokens + int(pc.sum(ok["visual_tokens"]).as_py() or 0),
            elapsed_s=elapsed_s,
        )


ProgressCallback = Callable[[Progress], None]
