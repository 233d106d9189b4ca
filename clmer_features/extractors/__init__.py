"""Feature extractors, one module each, registered by name."""
