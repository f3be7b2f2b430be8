"""Inputs: where they live (``storage``: fsspec filesystems, storage options), what a row is
(``rows``), listing folders, globs and files (``sources``), manifest records (``manifests``),
decoding any image safely (``images``) and synthetic images for benchmarks (``synthetic``).
Imports neither torch nor Ray.
"""
