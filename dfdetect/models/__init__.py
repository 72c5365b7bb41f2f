"""Stage 3: the heads (one file each), their shared blocks, the registry, and trained runs."""
