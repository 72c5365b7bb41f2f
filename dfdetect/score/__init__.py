"""Bulk scoring: any inputs (files, folders, archives, lists) -> one row each, long files in windows."""
