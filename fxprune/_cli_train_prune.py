"""Moved to ``fxprune.cli.train``; this name stays only until every importer has switched."""

from fxprune.cli.train import DatasetBatches, load_data, train_prune_command, write_result

__all__ = ["DatasetBatches", "load_data", "train_prune_command", "write_result"]
