"""Batch scoring, reports, heatmaps, engine helpers, serving and CLI glue."""
