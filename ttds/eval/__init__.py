"""Evaluation: ranking metrics over decoded top-K lists, mergeable across processes."""

from ttds.eval.metrics import RankingMetrics, metrics_markdown, shard_range, target_ranks, user_results_frame, write_metrics

__all__ = ["RankingMetrics", "metrics_markdown", "shard_range", "target_ranks", "user_results_frame", "write_metrics"]
