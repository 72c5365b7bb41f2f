"""Training a head from cached features, above the models: data.py (FeatureLoader: rows in memory or
streamed from the store into batches) and trainer.py (every epoch trained, evaluated on validation,
test and OOD sets, and saved through RunFolder)."""
