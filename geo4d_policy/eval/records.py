"""Episode records (``episodes.jsonl``) and run summaries (``summary.json``).

One record per finished episode, one JSON object per line, always rewritten whole and
atomically in ``episode_index`` order, so a reader never sees a torn line and a resumed run can
trust every line it reads. Core fields (always present):

    task, policy, seed, episode_index, success, duration_s, sim_time_s, failure_reason

``failure_reason`` is ``null`` on success. Diagnostics reported by the environment (the last
step's ``StepInfo.extras``) and by the policy (``diagnostics()``) are added as further top-level
keys; one that would shadow a core field is written as ``extra_<key>`` instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geo4d_policy.config import atomic_write_text
from geo4d_policy.eval.stats import wilson_interval

CORE_FIELDS: tuple[str, ...] = (
    "task",
    "policy",
    "seed",
    "episode_index",
    "success",
    "duration_s",
    "sim_time_s",
    "failure_reason",
)

EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


class RecordError(ValueError):
    """An ``episodes.jsonl`` that cannot be read back (corrupt line, missing field)."""


def jsonable(value: Any) -> Any:
    """``value`` made strictly JSON-serialisable (numpy -> Python, non-finite floats -> None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def merge_extras(record: dict[str, Any], extras: Mapping[str, Any]) -> dict[str, Any]:
    """Add diagnostics to ``record`` without ever overwriting a core field; returns ``record``."""
    for key, value in extras.items():
        key = str(key)
        record[f"extra_{key}" if key in CORE_FIELDS else key] = jsonable(value)
    return record


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of an ``episodes.jsonl`` (empty when the file does not exist).

    Raises:
        RecordError: a line is not a JSON object with the core fields.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{lineno}: not JSON ({e})") from None
        missing = [f for f in CORE_FIELDS if not isinstance(rec, dict) or f not in rec]
        if missing:
            raise RecordError(f"{path}:{lineno}: record lacks {missing}")
        records.append(rec)
    indices = [r["episode_index"] for r in records]
    if len(set(indices)) != len(indices):
        raise RecordError(f"{path}: duplicate episode indices")
    return records


def write_records(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Atomically rewrite ``path`` with ``records`` sorted by ``episode_index``."""
    ordered = sorted(records, key=lambda r: r["episode_index"])
    text = "".join(json.dumps(jsonable(r), sort_keys=False) + "\n" for r in ordered)
    atomic_write_text(path, text)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Aggregate of one rollout run (one task, one policy).

    Attributes:
        task, policy: what was evaluated.
        episodes: episodes requested.
        finished: episodes with a record (``< episodes`` after an interruption).
        successes: successful episodes among the finished ones.
        success_rate: ``successes / finished`` (0.0 when nothing finished).
        ci95: Wilson 95% interval of the success rate.
        wall_s: wall-clock time of the run, summed over resumed sessions.
        mean_duration_s: mean wall time of one episode (``None`` when nothing finished).
        failure_reasons: failure reason -> count.
        out_dir: the run directory.
        seed_stream: the seed stream of the episodes (``"eval"``, ``"dev"`` or ``"data"``).
        placement_error_median_m, placement_error_p90_m: median and 90th percentile of the
            records' ``placement_error_m`` (the placed object's distance to its target at the end
            of the episode, as the task defines it); ``None`` when no record carries one.
    """

    task: str
    policy: str
    episodes: int
    finished: int
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    wall_s: float
    mean_duration_s: float | None
    failure_reasons: dict[str, int]
    out_dir: str = ""
    seed_stream: str = "eval"
    placement_error_median_m: float | None = None
    placement_error_p90_m: float | None = None

    @property
    def complete(self) -> bool:
        return self.finished >= self.episodes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95)
        d["complete"] = self.complete
        return jsonable(d)


def placement_error_stats(records: Sequence[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """Median and 90th percentile (linear interpolation) of the records' ``placement_error_m``;
    ``(None, None)`` when none carries a finite value."""
    errors = [float(r["placement_error_m"]) for r in records
              if isinstance(r.get("placement_error_m"), (int, float)) and math.isfinite(r["placement_error_m"])]
    if not errors:
        return None, None
    return float(np.median(errors)), float(np.percentile(errors, 90))


def summarize(records: Sequence[Mapping[str, Any]], *, task: str, policy: str, episodes: int,
              wall_s: float, out_dir: str | Path = "", seed_stream: str = "eval") -> Summary:
    """Summarise finished episode records."""
    n = len(records)
    k = sum(1 for r in records if r["success"])
    durations = [r["duration_s"] for r in records if isinstance(r.get("duration_s"), (int, float))]
    reasons = Counter(str(r["failure_reason"]) for r in records if not r["success"])
    median, p90 = placement_error_stats(records)
    return Summary(
        task=task,
        policy=policy,
        episodes=episodes,
        finished=n,
        successes=k,
        success_rate=k / n if n else 0.0,
        ci95=wilson_interval(k, n),
        wall_s=float(wall_s),
        mean_duration_s=statistics.fmean(durations) if durations else None,
        failure_reasons=dict(reasons.most_common()),
        out_dir=str(out_dir),
        seed_stream=seed_stream,
        placement_error_median_m=median,
        placement_error_p90_m=p90,
    )


def pool_summaries(summaries: Sequence[Summary], *, task: str = "overall") -> Summary:
    """One summary over several runs (e.g. all tasks of a benchmark), episodes pooled."""
    n = sum(s.finished for s in summaries)
    k = sum(s.successes for s in summaries)
    reasons: Counter[str] = Counter()
    for s in summaries:
        reasons.update(s.failure_reasons)
    weighted = [(s.mean_duration_s, s.finished) for s in summaries if s.mean_duration_s is not None]
    total = sum(w for _, w in weighted)
    policies = sorted({s.policy for s in summaries})
    return Summary(
        task=task,
        policy=policies[0] if len(policies) == 1 else "+".join(policies),
        episodes=sum(s.episodes for s in summaries),
        finished=n,
        successes=k,
        success_rate=k / n if n else 0.0,
        ci95=wilson_interval(k, n),
        wall_s=sum(s.wall_s for s in summaries),
        mean_duration_s=sum(m * w for m, w in weighted) / total if total else None,
        failure_reasons=dict(reasons.most_common()),
        seed_stream="+".join(sorted({s.seed_stream for s in summaries})) or "eval",
    )


def write_summary(path: str | Path, summary: Summary) -> None:
    """Atomically write ``summary.json``."""
    atomic_write_text(path, json.dumps(summary.to_dict(), indent=2) + "\n")


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """The ``summary.json`` at ``path`` as a dict, or ``None`` if there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None
