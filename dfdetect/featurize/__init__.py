"""Stage 1: decode any audio, apply the seed's frontend, index datasets (and, later, write stores)."""
