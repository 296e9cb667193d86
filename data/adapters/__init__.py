"""Ingestion adapters: real benchmark formats into the three trace kinds."""

from servetune.data.adapters._base import Adapter, AdapterRegistry, file_sha256, read_head
from servetune.data.adapters._parquet import ServetuneParquetAdapter

__all__ = [
    "Adapter",
    "AdapterRegistry",
    "ServetuneParquetAdapter",
    "default_registry",
    "file_sha256",
    "read_head",
]


def default_registry() -> AdapterRegistry:
    """A fresh registry of the built-in adapters, in detection order."""
    return AdapterRegistry([
        ServetuneParquetAdapter(),
    ])
