"""S3, one object per image: the layout people start with, ``runs/<token>/<i in 9 digits>`` for image i of a run.

See ``storage/_objects.py`` for the location, the manifest that commits appends, and the index beside each run.
An object holds one record: the raw pixels, or with an ``encoding`` the encoded file. Reading sends one GET per
image, ``concurrency`` of them in flight at once; an object of another size than its index records is damage.
Every request pays a round trip, so this layout is bound by the requests a second that the server and the network
allow: the benchmarks show it against ``s3-shards``.
"""

from __future__ import annotations

import asyncio

import numpy as np

from storage._errors import DamagedStoreError
from storage._objects import ObjectStore, Run, object_key


class S3Store(ObjectStore):
    name = "s3"

    def _per_object(self, sizes: np.ndarray) -> int:
        return 1

    async def _get_run(self, run: Run, starts: np.ndarray, ends: np.ndarray, local: np.ndarray, out: np.ndarray):
        async def get(position: int, image_id: int) -> None:
            key = object_key(run.token, image_id)  # this layout writes one record an object
            data = await self._get(key, 0, None)
            if data.nbytes != ends[image_id] - starts[image_id]:
                raise DamagedStoreError(f"{self.location}/{key} holds {data.nbytes} bytes; its index says otherwise")
            out[position] = run.codec.decode(data, run.shape, run.dtype)

        await asyncio.gather(*(get(position, image_id) for position, image_id in enumerate(local.tolist())))
