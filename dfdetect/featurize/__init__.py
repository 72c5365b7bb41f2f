"""Bytes -> features, between the store and the heads: audio.py (decode any container, encode),
frontend.py (the reference study's frontend: 16 kHz mono, 3 s, peak norm, mel + delta, LFCC),
variants.py (codec round trips, seeded corruptions), wavlm.py (frozen WavLM) and pipeline.py (the
dask pass: a dataset's clip table -> blocks -> a store version)."""
