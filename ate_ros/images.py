"""sensor_msgs Image / CompressedImage <-> numpy RGB (what cv_bridge does, for the encodings used here)."""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from ate_core.data.episode import decode_jpeg
from ate_ros.conversions import ns_to_stamp

__all__ = ["ImageFormatError", "rgb_to_image", "image_to_rgb", "rgb_to_jpeg", "jpeg_to_rgb"]

_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


class ImageFormatError(ValueError):
    """An image message that cannot be read as 8-bit RGB (names the encoding or size problem)."""


def rgb_to_image(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    """uint8 ``[H, W, 3]`` RGB -> ``rgb8`` Image."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageFormatError(f"expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = 3 * msg.width
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def image_to_rgb(msg: Image) -> np.ndarray:
    """``rgb8`` / ``bgr8`` / ``mono8`` Image -> uint8 ``[H, W, 3]`` RGB (a copy)."""
    channels = _CHANNELS.get(msg.encoding)
    if channels is None:
        raise ImageFormatError(f"encoding {msg.encoding!r} is not one of {sorted(_CHANNELS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview))
                         else msg.data, dtype=np.uint8)
    if step < w * channels or data.size < step * h or h == 0 or w == 0:
        raise ImageFormatError(f"{w}x{h} {msg.encoding} image with step {step} and "
                               f"{data.size} bytes")
    pixels = data[:step * h].reshape(h, step)[:, :w * channels].reshape(h, w, channels)
    if msg.encoding == "rgb8":
        return pixels.copy()
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(pixels[..., ::-1])
    return np.repeat(pixels, 3, axis=2)


def rgb_to_jpeg(rgb: np.ndarray, stamp_ns: int, frame_id: str, quality: int = 90) -> CompressedImage:
    """uint8 RGB -> ``jpeg`` CompressedImage (image_transport's compressed format)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageFormatError("JPEG encoding failed")
    msg = CompressedImage()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = "rgb8; jpeg compressed bgr8"
    msg.data = buf.tobytes()
    return msg


def jpeg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """The frame of a ``jpeg`` CompressedImage, decoded as conversion and offline replay decode
    the recorded ones (one decoder: the same bytes give the same pixels everywhere)."""
    rgb = decode_jpeg(bytes(msg.data))
    if rgb is None:
        raise ImageFormatError(f"compressed image ({msg.format!r}, {len(msg.data)} bytes) "
                               f"does not decode")
    return rgb
