"""The heads, the reference systems and everything about a trained one, above featurize: blocks.py
(shared encoders), one file per head or reference system, registry.py (names, defaults, sizes),
runs.py (RunFolder, the run folder's one owner; load_run), pretrained.py (the exported folder's one
owner; load_model) and onnx_export.py (the mel heads to ONNX)."""
