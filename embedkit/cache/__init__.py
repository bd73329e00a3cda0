"""The HDF5 embedding cache: `store` reads and writes samples and feature matrices, `text` the
text-tower prompts beside them. The vocabulary (Samples, Split, split names) lives in
`embedkit.schema` and is re-exported here for the Python API."""

from embedkit.cache.store import (
    FORMAT,
    FORMAT_VERSION,
    Cache,
    CacheWriter,
    as_seen,
    content_fingerprint,
    merge,
    provenance_key,
    write_cache,
    write_derived,
)
from embedkit.cache.text import store_prompts, write_text
from embedkit.schema import SPLITS, Samples, Split, group_ids, group_names, split_code

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SPLITS",
    "Cache",
    "CacheWriter",
    "Samples",
    "Split",
    "as_seen",
    "content_fingerprint",
    "group_ids",
    "group_names",
    "merge",
    "provenance_key",
    "split_code",
    "store_prompts",
    "write_cache",
    "write_derived",
    "write_text",
]
