"""S3 shards: appends packed into shard objects of about ``shard_bytes`` each, read with ranged GETs that coalesce
neighbouring images: the layout streaming loaders (WebDataset, litdata, MosaicML Streaming) use.

See ``storage/_objects.py`` for the location, the manifest that commits appends, and the index beside each run. A
run's records (raw pixels, or with an ``encoding`` encoded files) are cut into shards of as many whole records as
fit in ``shard_bytes`` (default 64 MiB, at least one record a shard), ``runs/<token>/<shard in 9 digits>``.

Reading groups the wanted records by shard and merges records that lie less than ``gap_bytes`` apart (default
1 MiB) into one ranged GET, up to ``concurrency`` GETs in flight: a scan of consecutive ids is a few large GETs, a
random batch one GET per cluster. The merging is done here rather than by obstore's ``get_ranges`` so that the
requests sent are the requests counted. A GET that returns fewer bytes than asked is damage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from storage._errors import DamagedStoreError
from storage._objects import ObjectOptions, ObjectStore, Run, object_key
from storage._reading import is_consecutive

MAX_REQUEST_BYTES = 64 << 20  # a merged GET is cut into pieces of at most this size, fetched concurrently


@dataclass(frozen=True)
class ShardOptions(ObjectOptions):
    """`shard_bytes`: the size a shard is filled to; `gap_bytes`: records closer than this share one GET."""

    shard_bytes: int = 64 << 20
    gap_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("shard_bytes", "gap_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (name == "shard_bytes"):
                raise ValueError(f"{name} must be a positive integer (bytes), got {value!r}")


class S3ShardsStore(ObjectStore):
    name = "s3-shards"
    Options = ShardOptions

    def _per_object(self, sizes: np.ndarray) -> int:
        return max(1, int(self.options.shard_bytes // max(1, int(sizes.mean()))))

    async def _get_run(self, run: Run, starts: np.ndarray, ends: np.ndarray, local: np.ndarray, out: np.ndarray):
        shards = local // run.per_object
        order = np.lexsort((starts[local], shards))  # by shard, then by place in it
        ids, in_shard = local[order], shards[order]
        # a GET per cluster of records in one shard, each less than gap_bytes after the one before
        apart = (in_shard[1:] != in_shard[:-1]) | (starts[ids[1:]] - ends[ids[:-1]] >= self.options.gap_bytes)
        clusters = np.split(order, np.flatnonzero(apart) + 1)
        await asyncio.gather(*(self._get_cluster(run, starts, ends, local, cluster, out) for cluster in clusters))

    async def _get_cluster(self, run, starts, ends, local, positions, out) -> None:
        """One merged range of one shard: the records of `local[positions]`, copied to `out[positions]`."""
        ids = local[positions]
        key = object_key(run.token, int(ids[0]) // run.per_object)
        low, high = int(starts[ids].min()), int(ends[ids].max())
        pieces = range(low, high, MAX_REQUEST_BYTES)
        parts = await asyncio.gather(*(self._get(key, p, min(p + MAX_REQUEST_BYTES, high)) for p in pieces))
        data = parts[0] if len(parts) == 1 else memoryview(b"".join(parts))
        if data.nbytes != high - low:
            raise DamagedStoreError(f"{self.location}/{key} ends before byte {high} that its index records")
        if run.encoding == "raw":  # records of equal size, back to back: rows of a table, copied without a loop
            rows = np.frombuffer(data, np.uint8).reshape(-1, run.image_bytes)
            chosen = (starts[ids] - low) // run.image_bytes
            if is_consecutive(positions) and is_consecutive(chosen):  # a scan: one copy
                chosen, positions = slice(chosen[0], chosen[-1] + 1), slice(positions[0], positions[-1] + 1)
            out[positions] = rows[chosen].view(run.dtype).reshape(-1, *run.shape)
            return
        for position, image_id in zip(positions.tolist(), ids.tolist()):
            record = data[int(starts[image_id]) - low : int(ends[image_id]) - low]
            out[position] = run.codec.decode(record, run.shape, run.dtype)
