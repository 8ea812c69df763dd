"""The one writer of webdataset tar shards (members ``<key>.<ext>``), used by the teacher cache, the
demo corpus and the tests. A shard is written under a temporary name and renamed into place by
``commit()``, so a reader never sees half a shard; members get ``mtime=0`` so equal content gives
byte-identical shards."""
import io
import os
import tarfile
from typing import Iterable, Mapping, Union

from ..atomic_files import temp_path_for

Data = Union[bytes, str]


class TarShardWriter:
    """Stream samples into one shard; ``commit()`` publishes it, ``abort()`` drops it.
    As a context manager it commits on success and aborts on an exception."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = temp_path_for(path)
        self._tar = tarfile.open(self.tmp, "w")
        self.count = 0

    def add(self, key: str, ext: str, data: Data) -> None:
        """One member ``<key>.<ext>`` (``str`` data is UTF-8 encoded)."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(payload)
        info.mtime = 0
        self._tar.addfile(info, io.BytesIO(payload))

    def add_sample(self, sample: Mapping[str, Data]) -> None:
        """A sample ``{"__key__": key, ext: data, ...}``."""
        key = sample["__key__"]
        for ext, data in sample.items():
            if ext != "__key__":
                self.add(key, ext, data)
        self.count += 1

    def commit(self) -> str:
        self._tar.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def write_tar_shard(path: str, samples: Iterable[Mapping[str, Data]]) -> str:
    """Write ``samples`` (``{"__key__": key, ext: data}``) as one shard at ``path``; returns ``path``."""
    with TarShardWriter(path) as writer:
        for sample in samples:
            writer.add_sample(sample)
    return path
