"""People's labels read back as training data (issue 20; `python -m ml train --data feedback`
builds on `export`, which the `python -m ml` application passes to ml/sources.py).

The API keeps every item a person labels in the labelled-data store (core/labelled.py: a folder
`<DATA_DIR>/labelled`, or `labelled/` under BLOB_URL's S3 prefix), one JSON record per item
holding its image (a grey PNG, at most 256 px), the digit, and what the model said.
`export` writes the store as one folder per digit, the layout image-folder datasets use:

    DIR/0/<job>-<index>-<key>.png ... DIR/9/...

Reading needs the blob store only (no Redis, no API).
"""

from pathlib import Path

from core.blobs import BlobStore, make_labelled_store
from core.config import Settings, get_settings
from core.labelled import records


def _store(source: BlobStore | Settings | None) -> BlobStore:
    if source is None:
        return make_labelled_store(get_settings())
    if isinstance(source, Settings):
        return make_labelled_store(source)
    return source


def export(target_dir: Path, source: BlobStore | Settings | None = None) -> dict[int, int]:
    """Write every labelled item to `target_dir/<digit>/<job>-<index>-<key>.png`; returns how
    many were written per digit ({digit: count}, digits without items left out).

    `source`: the labelled store itself (core/blobs.py, e.g. `make_labelled_store(settings)`),
    settings to find it with, or None for the settings from the environment (DATA_DIR, BLOB_URL).
    An item relabelled since an earlier export moves to its new digit's folder.
    """
    target_dir = Path(target_dir)
    counts: dict[int, int] = {}
    for record in records(_store(source)):
        name = f"{record.job_id}-{record.index}-{record.key_id[:8]}.png"
        for digit in range(10):  # a relabelled item must not stay in its old folder
            (target_dir / str(digit) / name).unlink(missing_ok=True)
        folder = target_dir / str(record.digit)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(record.png)
        counts[record.digit] = counts.get(record.digit, 0) + 1
    return dict(sorted(counts.items()))
