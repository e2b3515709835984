"""Synthetic studies with known ground truth, one module per format; labelled synthetic in names and metadata."""
