#!/usr/bin/env python3
"""The preprocessing of the real libraries, for checking deltann's `preprocess` implementations.

    python preprocess_reference.py CASES.json

CASES.json lists cases, each {"rgb", "width", "height", "size", "crop", "implementation",
"filter", "out"}: `rgb` is a file of packed 8-bit RGB pixels (decoded by deltann, so that decoders
are not what is compared). For each case this writes to `out` what the library's pipeline makes
of those pixels, cropped to size x size: bytes, or little-endian float32 for TensorFlow. Run it
with the environment `deltann engines install references` creates (Pillow, OpenCV, TensorFlow at
pinned versions); tests/preprocess_reference.rs compares its files with deltann's byte for byte.

The pipelines, as their users write them (all resize the short side to round(size / crop)):
  torchvision  torchvision.transforms Resize + CenterCrop on a PIL image: long side
               int(short * long / short_side), Image.resize with the filter, crop offsets
               int(round((n - size) / 2.0))
  pil-round    the same with the long side round()ed
  opencv       cv2.resize(INTER_LINEAR) to torchvision's size, img[top:top+size, left:left+size]
               with top = (h - size) // 2
  tf           tf.image.resize(method="bilinear") to torchvision's size, then
               tf.image.crop_to_bounding_box with the same floored offsets; float result
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def resized_size(w, h, size, crop, rounding):
    short = round(size / crop)
    long = round if rounding else int
    if w <= h:
        return short, long(short * h / w)
    return long(short * w / h), short


def main():
    cases = json.load(open(sys.argv[1]))
    libraries = {c["implementation"] for c in cases}
    if libraries & {"torchvision", "pil-round"}:
        from PIL import Image

        filters = {
            "nearest": Image.Resampling.NEAREST,
            "box": Image.Resampling.BOX,
            "bilinear": Image.Resampling.BILINEAR,
            "hamming": Image.Resampling.HAMMING,
            "bicubic": Image.Resampling.BICUBIC,
            "lanczos3": Image.Resampling.LANCZOS,
        }
    if "opencv" in libraries:
        import cv2
    if "tf" in libraries:
        import tensorflow as tf

    for c in cases:
        w, h, size = c["width"], c["height"], c["size"]
        pixels = np.fromfile(c["rgb"], dtype=np.uint8).reshape(h, w, 3)
        impl = c["implementation"]
        nw, nh = resized_size(w, h, size, c["crop"], impl == "pil-round")
        if impl in ("torchvision", "pil-round"):
            img = Image.fromarray(pixels)
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), filters[c["filter"]])
            left = int(round((nw - size) / 2.0))
            top = int(round((nh - size) / 2.0))
            out = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
        elif impl == "opencv":
            img = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_LINEAR)
            top, left = (nh - size) // 2, (nw - size) // 2
            out = img[top : top + size, left : left + size]
        elif impl == "tf":
            img = tf.image.resize(pixels, [nh, nw], method="bilinear")
            top, left = (nh - size) // 2, (nw - size) // 2
            out = tf.image.crop_to_bounding_box(img, top, left, size, size).numpy()
            out = out.astype("<f4")
        else:
            sys.exit(f"unknown implementation {impl!r}")
        np.ascontiguousarray(out).tofile(c["out"])
    versions = {"numpy": np.__version__}
    if "Image" in dir():
        import PIL

        versions["pillow"] = PIL.__version__
    if "opencv" in libraries:
        versions["opencv"] = cv2.__version__
    if "tf" in libraries:
        versions["tensorflow"] = tf.__version__
    print(json.dumps({"cases": len(cases), "versions": versions}))


if __name__ == "__main__":
    main()
