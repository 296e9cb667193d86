"""servetune's own Parquet trace files (collector and simulator output, store exports)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from servetune import InputError
from servetune.data._schemas import KINDS, conform
from servetune.data.adapters._base import Adapter

__all__ = ["ServetuneParquetAdapter"]

_MAGIC = b"PAR1"


class ServetuneParquetAdapter(Adapter):
    """A Parquet file of one trace kind, named by its ``servetune.kind`` schema metadata."""

    name = "servetune-parquet"
    description = "servetune's own steps/requests/runs Parquet files (collector output)"

    def sniff(self, path: Path, head: bytes) -> bool:
        return head[:4] == _MAGIC and self._kind(path) is not None

    def read(self, path: Path, *, sha256: str) -> dict[str, pa.Table]:
        kind = self._kind(path)
        if kind is None:
            raise InputError("expected a Parquet file with 'servetune.kind' metadata "
                             f"(one of {', '.join(KINDS)})", path=str(path))
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"unreadable Parquet file ({exc})", path=str(path)) from None
        return {kind: conform(table, kind, path=str(path))}

    @staticmethod
    def _kind(path: Path) -> str | None:
        try:
            metadata = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowInvalid):
            return None
        kind = metadata.get(b"servetune.kind", b"").decode()
        return kind if kind in KINDS else None
