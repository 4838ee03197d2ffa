"""How `tl train` shows a TrainResult: the summary table and where the files are.

Used by the CLI and the demo only; `fit` never prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from tl.console import shown

if TYPE_CHECKING:
    from tl.train.loop import TrainResult


def render_summary(result: "TrainResult") -> Table:
    """The best epoch's accuracy and per-class precision/recall."""
    # Wide enough for its title, which would otherwise wrap over the four narrow columns.
    table = Table(title=f"best epoch {result.best_epoch}: val accuracy {result.best_val_acc:.3f}, "
                        f"loss {result.best_val_loss:.4f}", title_justify="left", min_width=48)
    table.add_column("class")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    table.add_column("images", justify="right")
    for row in result.per_class:
        table.add_row(shown(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", str(row["support"]))
    return table


def print_summary(result: "TrainResult", *, console: Console) -> None:
    """The table, then skipped images, an early stop, and the run folder."""
    from tl.console import print_table

    print_table(render_summary(result), console)
    if result.skipped:
        shown = ", ".join(result.skipped[:5]) + (" ..." if len(result.skipped) > 5 else "")
        console.print(f"skipped {len(result.skipped)} bad image(s): {shown}", soft_wrap=True, highlight=False,
                      markup=False)
    if result.stopped_early:
        console.print(f"stopped early after epoch {result.epochs_run} (--patience)")
    console.print(f"run folder: {result.run_dir}  (best.pt, last.pt, metrics.jsonl, history.png, "
                  f"confusion.png, batch.png, spec.json)", soft_wrap=True, highlight=False, markup=False)
