"""Labelled items kept as training data (issue 20): they outlive their jobs.

Each item a person labels is copied into the blob store beside the uploads (core/blobs.py
`make_labelled_store`: `<DATA_DIR>/labelled`, or `labelled/` under BLOB_URL's prefix) as one
JSON record: the image (the PNG the review page shows, at most 256 px), the digit, the model
version with its predicted digit and confidence, the labelling API key's id (the digest jobs are
owned by, never the key) and the time. A record is named after its key id, job and item, so
labelling an item again replaces its record and clearing a label deletes it; a key's records
can be deleted together (DELETE /labels).

The store holds at most MAX_LABELLED_ITEMS records. Which records exist is mirrored in one Redis
hash (bounded by the same number), so that admitting a batch is one atomic check, not a listing
of the bucket. `core/feedback.py` reads the store back (`python -m ml feedback export DIR`).
"""

import base64
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import redis

from core import scripts
from core.blobs import BlobStore

INDEX = "digitq:labelled"  # {record name: key id}, at most MAX_LABELLED_ITEMS fields
OPEN_KEY_ID = "open"  # the key id of labels given without API keys


class StoreFull(Exception):
    def __init__(self, limit: int, room: int) -> None:
        super().__init__(
            f"the labelled-data store is full ({limit} items, MAX_LABELLED_ITEMS); {room} more fit. "
            "Export it (python -m ml feedback export DIR) and delete labels (DELETE /labels), "
            "or raise the limit"
        )
        self.limit, self.room = limit, room


@dataclass(frozen=True)
class Record:
    job_id: str
    index: int
    digit: int
    png: bytes  # the item's image, as GET /jobs/{id}/items/{index}/image serves it
    model_version: str | None
    predicted: int | None
    confidence: float | None
    key_id: str
    labelled_at: float

    @property
    def name(self) -> str:
        return record_name(self.key_id, self.job_id, self.index)

    def to_json(self) -> bytes:
        fields = asdict(self)
        fields["png"] = base64.b64encode(self.png).decode()
        return json.dumps(fields).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Record":
        fields = json.loads(raw)
        fields["png"] = base64.b64decode(fields["png"])
        return cls(**fields)


def record_name(key_id: str, job_id: str, index: int) -> str:
    return f"{key_id}/{job_id}-{index}.json"


class LabelledStore:
    def __init__(self, blobs: BlobStore, client: redis.Redis, limit: int) -> None:
        self.blobs, self.redis, self.limit = blobs, client, limit
        self._admit = scripts.register(client, "labelled_admit")

    def put(self, records: list[Record]) -> None:
        """Store every record (replacing earlier ones of the same items), or none: StoreFull."""
        if not records:
            return
        key_id = records[0].key_id
        reply = int(self._admit(keys=[INDEX], args=[self.limit, key_id, *(r.name for r in records)]))
        if reply < 0:
            raise StoreFull(self.limit, -reply - 1)
        for record in records:
            self.blobs.put(record.name, io.BytesIO(record.to_json()))

    def remove(self, key_id: str, job_id: str, indices: Iterable[int]) -> None:
        """Delete the records of these items (their labels were cleared)."""
        names = [record_name(key_id, job_id, i) for i in indices]
        for name in names:
            self.blobs.delete(name)
        if names:
            self.redis.hdel(INDEX, *names)

    def delete_key(self, key_id: str) -> int:
        """Delete every record labelled with this key; how many there were."""
        names = list(self.blobs.keys(key_id))
        self.blobs.delete_prefix(key_id)
        stale = [name for name, owner in self.redis.hscan_iter(INDEX) if _text(owner) == key_id]  # type: ignore[union-attr]
        if stale:
            self.redis.hdel(INDEX, *stale)
        return len(names)

    def count(self) -> int:
        return int(self.redis.hlen(INDEX))  # type: ignore[arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def records(blobs: BlobStore) -> Iterator[Record]:
    """Every record in the store (no Redis needed: `python -m ml feedback export` reads this)."""
    for name in blobs.keys(""):
        if name.endswith(".json"):
            yield Record.from_json(blobs.get(name))
