"""An item's image as a person looks at it: the upload scaled down, or the 28x28 the model saw.

Decoded exactly as classification decodes (`ml.preprocess.decode_image`: the accepted formats
only, MAX_PIXELS refused before decoding, big images reduced while decoding), so a hostile image
costs the API no more than it costs a worker. numpy and Pillow only: the API imports this.
"""

import io

import numpy as np
from PIL import Image

from ml.preprocess import decode_image, to_mnist

VIEW_SIDE = 256  # the uploaded view's longer side at most


def _png(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def upload_png(blob: bytes, side: int = VIEW_SIDE) -> bytes:
    """The image as uploaded (grey, EXIF orientation applied), its longer side at most `side`.
    Raises ml.preprocess.ImageError (a message for the user) on anything classification refuses."""
    gray = decode_image(blob)
    image = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L")
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _png(np.asarray(image))


def model_png(blob: bytes) -> bytes:
    """The 28x28 digit (light ink on black) that preprocessing hands to the model; the model's
    own first step, deskewing, happens inside its pipeline. Raises ImageError as classification does."""
    return _png(to_mnist(decode_image(blob)))
