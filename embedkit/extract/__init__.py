"""Extraction: run a dataset through a frozen backbone into a cache (`extractor`), resumable and
shardable, with its settings in one `ExtractConfig` (`config`)."""

from embedkit.extract.config import ExtractConfig
from embedkit.extract.extractor import EXTRACT_FORMAT, Layout, extract

__all__ = ["EXTRACT_FORMAT", "ExtractConfig", "Layout", "extract"]
