"""Stage 3: metrics (shared with the trainer), and later reports and bulk scoring."""
