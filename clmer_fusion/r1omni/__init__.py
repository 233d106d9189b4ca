"""R1-Omni decoding from cached tower outputs."""
