"""Features made elsewhere, in and out: .npy folders, HDF5 files, MMSA pickles.

``import_features("npy", "feats/", "clips.csv", "openface")`` turns a folder
of per-clip arrays into a normal, finalized store feature (spec extractor
``import:npy``); ``export_features("openface", "hdf5", "out.h5", dataset=...)``
writes a stored feature back out. Layouts: see ``interop.formats``.
"""
from clmer_features.interop.exporter import ExportSummary, export_features
from clmer_features.interop.formats import FORMATS, InteropError, decode_name, encode_name
from clmer_features.interop.importer import ImportSummary, import_features

__all__ = [
    "FORMATS", "InteropError", "ImportSummary", "ExportSummary", "import_features", "export_features",
    "encode_name", "decode_name",
]
