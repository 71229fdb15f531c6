# Writes tests/data/pil_resize.json: a small random RGB image and what
# Pillow's bilinear resize (what torchvision's Resize / RandomResizedCrop
# call on PIL images) makes of it, plus torchvision's ImageNet evaluation
# transform (Resize(ceil(r / 0.875)), CenterCrop(r)) for r = 12.
# Run from the repository root: python3 tests/data/make_pil_fixture.py
import json, math
import numpy as np
import PIL
from PIL import Image

rng = np.random.default_rng(0)
h, w = 23, 17
pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
img = Image.fromarray(pixels, "RGB")
cases = []
for out_h, out_w in [(11, 8), (40, 30), (23, 9), (7, 17)]:
    out = np.asarray(img.resize((out_w, out_h), Image.BILINEAR))
    cases.append({"height": out_h, "width": out_w, "pixels": out.reshape(-1).tolist()})
r = 12
short = int(math.ceil(r / 0.875))
new_w, new_h = short, int(short * h / w)      # torchvision: h > w
resized = img.resize((new_w, new_h), Image.BILINEAR)
top, left = int(round((new_h - r) / 2.0)), int(round((new_w - r) / 2.0))
crop = np.asarray(resized.crop((left, top, left + r, top + r)))
json.dump({"pillow": PIL.__version__, "height": h, "width": w,
           "pixels": pixels.reshape(-1).tolist(), "resize": cases,
           "eval": {"resolution": r, "pixels": crop.reshape(-1).tolist()}},
          open("tests/data/pil_resize.json", "w"))
print(PIL.__version__, new_h, new_w, top, left)

# tests/data/pil_jitter.json: the reference's "tf" colour distortion
# (torchvision ColorJitter(brightness=32/255, saturation=0.5), which calls
# ImageEnhance.Brightness / ImageEnhance.Color on PIL images) for fixed
# factors, in both orders, on the same image.
from PIL import ImageEnhance
jitter = []
for b, s in [(1.0 + 32 / 255, 1.5), (1.0 - 32 / 255, 0.5), (1.07, 0.81), (0.93, 1.23)]:
    for order in ["brightness_first", "saturation_first"]:
        out = img
        steps = [lambda im: ImageEnhance.Brightness(im).enhance(b),
                 lambda im: ImageEnhance.Color(im).enhance(s)]
        if order == "saturation_first":
            steps.reverse()
        for step in steps:
            out = step(out)
        jitter.append({"brightness": b, "saturation": s, "order": order,
                       "pixels": np.asarray(out).reshape(-1).tolist()})
json.dump({"pillow": PIL.__version__, "height": h, "width": w,
           "pixels": pixels.reshape(-1).tolist(), "jitter": jitter},
          open("tests/data/pil_jitter.json", "w"))
