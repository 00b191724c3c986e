"""Human-readable reports of rollout runs: rich tables of success rates and failure reasons."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from geo4d_policy.eval.records import Summary, pool_summaries


def format_seconds(seconds: float | None) -> str:
    """``"12.3 s"``, ``"4 min 05 s"``, ``"1 h 02 min"``, or ``"-"`` for ``None``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s:02d} s"
    h, rest = divmod(round(seconds), 3600)
    return f"{h} h {rest // 60:02d} min"


def format_rate(summary: Summary) -> tuple[str, str]:
    """Success rate and its 95% interval as percentages."""
    lo, hi = summary.ci95
    return f"{100 * summary.success_rate:.1f}%", f"[{100 * lo:.1f}%, {100 * hi:.1f}%]"


COLUMNS = ("task", "policy", "episodes", "successes", "success rate", "95% CI", "mean episode time", "wall time")


def _rows(summaries: Sequence[Summary], overall: bool | None) -> list[tuple[list[str], bool]]:
    """One list of cell texts per run (and the pooled one), with a flag for the pooled row."""
    runs = list(summaries)
    rows = []
    for s in runs + ([pool_summaries(runs)] if (overall if overall is not None else len(runs) > 1) else []):
        rate, ci = format_rate(s)
        episodes = str(s.finished) if s.complete else f"{s.finished}/{s.episodes}"
        rows.append(([s.task, s.policy, episodes, str(s.successes), rate, ci, format_seconds(s.mean_duration_s),
                      format_seconds(s.wall_s)], len(rows) >= len(runs)))
    return rows


def summary_table(summaries: Sequence[Summary], *, overall: bool | None = None) -> Table:
    """Table with one row per run and, for several runs (or ``overall=True``), a pooled row.

    Columns: task, policy, episodes, successes, success rate, 95% CI (Wilson), mean episode
    time, wall time. An unfinished run shows ``finished/requested`` episodes.
    """
    table = Table(title="Rollout results", title_justify="left")
    table.add_column("task")
    table.add_column("policy")
    for col in COLUMNS[2:]:
        table.add_column(col, justify="right", no_wrap=True)
    for cells, pooled in _rows(summaries, overall):
        if pooled:
            table.add_section()
        table.add_row(*cells, style="bold" if pooled else None)
    return table


def summary_table_transposed(summaries: Sequence[Summary], *, overall: bool | None = None) -> Table:
    """The same numbers with one column per run, for terminals too narrow for :func:`summary_table`."""
    rows = _rows(summaries, overall)
    table = Table(title="Rollout results", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    for _ in rows:
        table.add_column("", justify="right", overflow="fold")
    for i, name in enumerate(COLUMNS):
        table.add_row(name, *(cells[i] for cells, _ in rows))
    return table


def failure_table(summary: Summary) -> Table:
    """Failure reasons and their counts, most frequent first."""
    table = Table(title=f"Failure reasons ({summary.finished - summary.successes} failed)", title_justify="left")
    table.add_column("count", justify="right")
    table.add_column("reason", justify="left", overflow="fold")
    for reason, count in summary.failure_reasons.items():
        table.add_row(str(count), reason)
    return table


def print_report(summaries: Sequence[Summary], *, console: Console | None = None) -> None:
    """Print the results table and, where episodes failed, the failure reasons."""
    console = console or Console()
    table = summary_table(summaries)
    if Measurement.get(console, console.options.update_width(100_000), table).maximum > console.width:
        table = summary_table_transposed(summaries)
    console.print(table)
    failed = [s for s in summaries if s.failure_reasons]
    if len(summaries) > 1 and failed:
        console.print(failure_table(pool_summaries(summaries)))
    elif failed:
        console.print(failure_table(failed[0]))
