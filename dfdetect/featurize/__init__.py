"""Stage 1: decode any audio, apply the reference study's frontend, index datasets (and, later, write stores)."""
