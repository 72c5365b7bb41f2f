"""Whole studies from one file: stores, runs and the report (the top of the pipeline, below the CLI)."""
