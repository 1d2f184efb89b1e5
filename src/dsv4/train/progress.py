"""A rich progress bar for training: steps (or budget time), loss, tokens/s and MFU.

Drawn on stderr so that stdout stays clean for the summaries other commands print;
silent on non-zero ranks and when disabled.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainProgress:
    def __init__(self, enabled: bool, total: float, start: float, by_time: bool):
        self.enabled, self.by_time = enabled, by_time
        self.console = Console(stderr=True, log_path=False)
        self._progress = None
        if not enabled:
            return
        counter = TextColumn("{task.percentage:>3.0f}%") if by_time else MofNCompleteColumn()
        self._progress = Progress(
            TextColumn("[bold]pretrain"),
            BarColumn(),
            counter,
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("pretrain", total=total, completed=start, info="")
        self._progress.start()

    def update(self, completed: float, loss: float, tok_s: float, mfu: float) -> None:
        if self._progress is not None:
            info = f"loss {loss:.3f} | {tok_s / 1e3:.1f}k tok/s | MFU {100 * mfu:.1f}%"
            self._progress.update(self._task, completed=completed, info=info)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.log(message) if self._progress is None else self._progress.console.log(message)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
