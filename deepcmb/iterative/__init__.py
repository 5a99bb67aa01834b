"""Iterative (maximum-a-posteriori) lensing reconstruction on the flat sky."""
