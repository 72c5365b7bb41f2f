"""The Zarr feature store: what featurize writes once and every later stage reads.

    from dfdetect.store import open_store
    store = open_store("stores/asv5.zarr")          # the newest complete version
    store.meta["label"], store.array("mel")[0:64]

See `schema.py` for the layout.
"""

from dfdetect.store.schema import FeatureStore, StoreError, open_store, parse_store_spec

__all__ = ["FeatureStore", "StoreError", "open_store", "parse_store_spec"]
