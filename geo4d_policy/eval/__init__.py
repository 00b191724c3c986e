"""Evaluation: the rollout runner, episode records, success statistics and reports.

Modules: :mod:`~geo4d_policy.eval.runner` (``run_rollouts``, ``RolloutConfig``),
:mod:`~geo4d_policy.eval.worker` (one episode in a worker process),
:mod:`~geo4d_policy.eval.records` (``episodes.jsonl`` / ``summary.json``),
:mod:`~geo4d_policy.eval.stats` (Wilson interval), :mod:`~geo4d_policy.eval.report` (tables).
Nothing is imported here, so that worker processes load only what they use.
"""
