"""The adapter interface: turn one source file into rows of the three trace kinds.

An adapter is a small object with a ``name``, a cheap ``sniff`` that recognises its format from
the file name and first bytes, and ``read`` that parses the whole file into conformed tables or
raises :class:`~servetune.InputError` naming the file, row and field. Adapters never write: the
store does, after ``read`` has succeeded, so bad input leaves nothing behind.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from servetune import InputError

__all__ = ["Adapter", "AdapterRegistry", "file_sha256", "read_head"]

HEAD_BYTES = 64 * 1024


class Adapter(abc.ABC):
    """Reads one source format into ``{"steps"|"requests"|"runs": pyarrow.Table}``."""

    #: the ``--format`` name
    name: str = ""
    #: one line for ``servetune ingest --help``
    description: str = ""

    @abc.abstractmethod
    def sniff(self, path: Path, head: bytes) -> bool:
        """Whether ``path`` (whose first bytes are ``head``) is in this adapter's format."""

    @abc.abstractmethod
    def read(self, path: Path, *, sha256: str) -> dict[str, pa.Table]:
        """Parse ``path`` completely; raise :class:`InputError` on anything unexpected.

        A kind whose rows do not fit in memory may be returned as a
        :class:`~servetune.data.TableStream` after the whole file has been validated.
        """


class AdapterRegistry:
    """An ordered, duplicate-free set of adapters; detection asks each in order."""

    def __init__(self, adapters: Iterable[Adapter] = ()) -> None:
        self._adapters: dict[str, Adapter] = {}
        for adapter in adapters:
            self.register(adapter)

    def register(self, adapter: Adapter) -> None:
        """Add an adapter; a second adapter with the same name is an error."""
        if not adapter.name:
            raise ValueError(f"{type(adapter).__name__} has no name")
        if adapter.name in self._adapters:
            raise ValueError(f"an adapter named {adapter.name!r} is already registered")
        self._adapters[adapter.name] = adapter

    @property
    def names(self) -> Sequence[str]:
        """The registered format names, in detection order."""
        return tuple(self._adapters)

    def get(self, name: str) -> Adapter:
        """The adapter called ``name``, or an error listing the valid names."""
        try:
            return self._adapters[name]
        except KeyError:
            raise InputError(f"unknown format {name!r}; expected one of "
                             f"{', '.join(self._adapters)}", field="--format") from None

    def detect(self, path: Path) -> Adapter:
        """The first adapter that recognises ``path``, or an error saying none did."""
        head = read_head(path)
        for adapter in self._adapters.values():
            if adapter.sniff(path, head):
                return adapter
        raise InputError(f"unknown format: none of {', '.join(self._adapters)} recognises this "
                         "file; name one with --format", path=str(path))


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of ``path``, or an :class:`InputError` if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=str(path)) from None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
