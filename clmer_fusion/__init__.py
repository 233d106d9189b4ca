"""clmer_fusion: heads, metrics, explanation and R1-Omni decoding, purely from a feature cache.

Never imports decord, funasr or clmer_features' extractors: the store format is the contract.
"""

__version__ = "0.1.0"
