# Fixtures for src/data/pil_resize.ts and the LSUN dataset: Pillow's
# Image.resize on random 8-bit images, and upstream LSUNBase's preprocessing
# (center crop, resize, /127.5 - 1) on small PNG files.
# Run: /usr/bin/python3 test/reference/pil_resize_ref.py   (needs python3-pil)
import json, os
import numpy as np
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
out_dir = os.path.join(here, '..', 'fixtures', 'data')
os.makedirs(out_dir, exist_ok=True)
rng = np.random.default_rng(0)
filters = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC, 'lanczos': Image.LANCZOS}
cases = []
# (mode, h, w, outH, outW): shrink, enlarge, mixed, odd factors
for mode, h, w, oh, ow in [('L', 37, 29, 8, 8), ('RGB', 16, 24, 7, 5), ('RGB', 9, 11, 23, 17), ('L', 64, 64, 32, 32), ('RGB', 20, 13, 20, 6), ('L', 5, 40, 12, 40)]:
    c = 3 if mode == 'RGB' else 1
    img = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    # Smooth-ish content too, so the result is not only clipping noise.
    img[: h // 2] = (np.linspace(0, 255, w)[None, :, None] * np.ones((h // 2, 1, c))).astype(np.uint8)
    pil = Image.fromarray(img[:, :, 0] if c == 1 else img, mode)
    case = {'c': c, 'h': h, 'w': w, 'outH': oh, 'outW': ow, 'src': img.transpose(2, 0, 1).reshape(-1).tolist(), 'out': {}}
    for name, f in filters.items():
        r = np.asarray(pil.resize((ow, oh), resample=f))
        if r.ndim == 2:
            r = r[:, :, None]
        case['out'][name] = r.transpose(2, 0, 1).reshape(-1).tolist()
    cases.append(case)
with open(os.path.join(out_dir, 'pil_resize.json'), 'w') as fh:
    json.dump(cases, fh, separators=(',', ':'))

# LSUNBase on a tiny folder: data_root/<names>, a file list, size 8, bicubic, no flip.
root = os.path.join(out_dir, 'lsun')
os.makedirs(os.path.join(root, 'imgs', 'sub'), exist_ok=True)
names = ['imgs/a.png', 'imgs/sub/b.png', 'imgs/c.png']
shapes = [(12, 20), (21, 14), (8, 8)]
expected = []
for name, (h, w) in zip(names, shapes):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(img, 'RGB').save(os.path.join(root, name))
    crop = min(h, w)
    cimg = img[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
    r = np.asarray(Image.fromarray(cimg).resize((8, 8), resample=Image.BICUBIC)).astype(np.uint8)
    expected.append((r / 127.5 - 1.0).astype(np.float32).transpose(2, 0, 1).reshape(-1).tolist())
with open(os.path.join(root, 'files.txt'), 'w') as fh:
    fh.write('\n'.join(names) + '\n')
with open(os.path.join(root, 'expected.json'), 'w') as fh:
    json.dump({'size': 8, 'files': names, 'images': expected}, fh, separators=(',', ':'))
print('wrote', out_dir)
