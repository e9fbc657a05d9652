#!/usr/bin/env python3
"""Recreate tests/fixtures/{chelsea,coffee,rocket}.jpg from a scikit-image wheel.

    pip download --no-deps --only-binary=:all: scikit-image -d DIR
    python3 tools/reference/make_fixtures.py DIR/scikit_image-*.whl tests/fixtures

Each image is cropped (coffee: the centre square; rocket: a portrait strip around the rocket,
leaving out the launch towers that read as "drilling platform"), downscaled with a Lanczos filter
(longer side 320 px, 384 px for coffee) and saved as JPEG quality 90. The crops make the expected
ImageNet classes hold with a margin whatever resampling filter the preprocessing uses.
"""

import io
import sys
import zipfile
from pathlib import Path

from PIL import Image

# name: (member, crop box (left, top, right, bottom) or None, longer side)
SOURCES = {
    "chelsea.jpg": ("skimage/data/chelsea.png", None, 320),
    "coffee.jpg": ("skimage/data/coffee.png", (100, 0, 500, 400), 384),
    "rocket.jpg": ("skimage/data/rocket.jpg", (232, 0, 412, 427), 320),
}


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name, (member, box, long_side) in SOURCES.items():
            img = Image.open(io.BytesIO(z.read(member))).convert("RGB")
            if box:
                img = img.crop(box)
            w, h = img.size
            scale = long_side / max(w, h)
            img = img.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
            img.save(out / name, "JPEG", quality=90)
            print(f"{name}: {w}x{h} -> {img.size[0]}x{img.size[1]}, {(out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
