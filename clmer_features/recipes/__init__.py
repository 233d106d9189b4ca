"""Dataset recipes: official label files -> manifests."""
