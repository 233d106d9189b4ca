"""clmer_features: manifests -> media -> encoders -> versioned Zarr feature store.

Importing this package (and ``clmer_features.store``) is light: numpy, zarr
and polars only. Encoders, decord and funasr load inside the modules that
need them.
"""

__version__ = "0.1.0"
