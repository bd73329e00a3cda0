"""Extraction: run a dataset through a frozen backbone into a cache (`extractor`), resumable and
shardable."""

from embedkit.extract.extractor import EXTRACT_FORMAT, Layout, extract

__all__ = ["EXTRACT_FORMAT", "Layout", "extract"]
