"""Oracle ops for the evaluation code: padded pooling and bilinear resizing
(torch.nn.functional in float64), and the TF1 resize written out from its
definition (torch has no such mode)."""
import torch
import torch.nn.functional as F
from oracle import op


@op("max_pool2d")
def max_pool2d(i, a):
    return F.max_pool2d(i["x"], a["kernel"], a["stride"], a["padding"])


@op("avg_pool2d_padded")
def avg_pool2d_padded(i, a):
    return F.avg_pool2d(i["x"], a["kernel"], a["stride"], a["padding"], count_include_pad=a["count_include_pad"])


def _tf1_axis(n, n_out, dtype):
    # TF1 resize_bilinear, align_corners=False, half_pixel_centers=False.
    src = torch.arange(n_out, dtype=dtype) * (n / n_out)
    i0 = torch.clamp(torch.floor(src).long(), max=n - 1)
    i1 = torch.clamp(i0 + 1, max=n - 1)
    return i0, i1, src - i0.to(dtype)


@op("resize_bilinear")
def resize_bilinear(i, a):
    x = i["x"]
    h, w = a["size"]
    mode = a.get("mode", "half_pixel")
    if mode == "half_pixel":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if mode == "align_corners":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
    r0, r1, lr = _tf1_axis(x.shape[2], h, x.dtype)
    c0, c1, lc = _tf1_axis(x.shape[3], w, x.dtype)
    lr = lr.view(-1, 1)
    top = x[:, :, r0, :]
    bot = x[:, :, r1, :]
    rows = top * (1 - lr) + bot * lr
    return rows[:, :, :, c0] * (1 - lc) + rows[:, :, :, c1] * lc


# ---- metrics references (numpy/scipy in float64, written from the papers'
# definitions). Scalars come back as (hi, lo) float32 pairs, hi + lo carrying
# ~48 bits, since the oracle protocol returns float32.

import numpy as np

# scipy is imported where it is used, so the whole oracle still starts on a
# machine without it (only the sqrtm-based FID reference needs it).


def _hilo(v):
    t = torch.as_tensor(np.asarray(v, dtype=np.float64))
    hi = t.float()
    lo = (t - hi.double()).float()
    return torch.stack([hi, lo])


def _np(t):
    return t.detach().double().numpy()


@op("feature_stats_ref")
def feature_stats_ref(i, a):
    x = _np(i["x"])
    return _hilo(x.mean(axis=0)), _hilo(np.cov(x, rowvar=False))


def _stats(x):
    return x.mean(axis=0), np.cov(x, rowvar=False)


@op("fid_ref")
def fid_ref(i, a):
    """FID as pytorch-fid defines it: scipy's sqrtm of the covariance product
    (with a small diagonal offset if it is not finite, real part taken), plus
    an eigenvalue form sum sqrt(eig(S1 S2)) for singular covariances."""
    import scipy.linalg

    mu1, s1 = _stats(_np(i["x"]))
    mu2, s2 = _stats(_np(i["y"]))
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off).dot(s2 + off))
    tr_sqrtm = np.trace(np.real(covmean))
    ev = np.linalg.eigvals(s1.dot(s2))
    tr_eig = np.sqrt(np.clip(np.real(ev), 0, None)).sum()
    base = diff.dot(diff) + np.trace(s1) + np.trace(s2)
    return _hilo([base - 2 * tr_sqrtm, base - 2 * tr_eig, tr_sqrtm, tr_eig])


@op("inception_score_ref")
def inception_score_ref(i, a):
    logits = _np(i["logits"])
    splits = a["splits"]
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    logp = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
    p = np.exp(logp)
    scores = []
    for k in range(splits):
        lo, hi = k * n // splits, (k + 1) * n // splits
        q = p[lo:hi].mean(axis=0)
        kl = (p[lo:hi] * (logp[lo:hi] - np.log(q))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    scores = np.array(scores)
    return _hilo([scores.mean(), scores.std()]), _hilo(scores)


def _poly_mmd2(x, y, degree, gamma, coef0):
    kxx = (x @ x.T * gamma + coef0) ** degree
    kyy = (y @ y.T * gamma + coef0) ** degree
    kxy = (x @ y.T * gamma + coef0) ** degree
    m, n = x.shape[0], y.shape[0]
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


@op("kid_ref")
def kid_ref(i, a):
    """KID over given subsets: rows of ridx/fidx index the real/fake features."""
    x, y = _np(i["x"]), _np(i["y"])
    ridx, fidx = i["ridx"].long().numpy(), i["fidx"].long().numpy()
    d = x.shape[1]
    degree, gamma, coef0 = a.get("degree", 3), a.get("gamma", 1.0 / d), a.get("coef0", 1.0)
    vals = np.array([_poly_mmd2(x[r], y[f], degree, gamma, coef0) for r, f in zip(ridx, fidx)])
    return _hilo([vals.mean(), vals.std()]), _hilo(vals)


def _pairwise_d2(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)


@op("precision_recall_ref")
def precision_recall_ref(i, a):
    """Kynkäänniemi et al. 2019: k-th NN radii within each set (self excluded),
    precision = share of fake samples within some real ball, recall the converse."""
    real, fake = _np(i["x"]), _np(i["y"])
    k = a.get("k", 3)
    drr, dff, dfr = _pairwise_d2(real, real), _pairwise_d2(fake, fake), _pairwise_d2(fake, real)
    rr = np.sort(drr, axis=1)[:, k]  # column 0 is the sample itself
    rf = np.sort(dff, axis=1)[:, k]
    precision = (dfr <= rr[None, :]).any(axis=1).mean()
    recall = (dfr.T <= rf[None, :]).any(axis=1).mean()
    return _hilo([precision, recall]), _hilo(rr), _hilo(rf)


# ---- the FID InceptionV3 in PyTorch, written from the published
# architecture (Szegedy et al. 2016, torchvision's Inception3 layout, with the
# FID port's changes: real-pixel average pools in the A/C/E blocks, a max-pool
# branch in the last E block, 1008 classes). Functional, over a state dict read
# from a safetensors file, in float64; BatchNorm in evaluation mode, eps 1e-3.

import json as _json
import struct as _struct

_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def _read_safetensors(path):
    with open(path, "rb") as fh:
        raw = fh.read()
    n = _struct.unpack("<Q", raw[:8])[0]
    header = _json.loads(raw[8:8 + n])
    out = {}
    for k, e in header.items():
        if k == "__metadata__":
            continue
        b, end = e["data_offsets"]
        arr = np.frombuffer(raw[8 + n + b:8 + n + end], dtype=_ST_DTYPES[e["dtype"]]).reshape(e["shape"])
        out[k] = torch.from_numpy(arr.copy())
    return out


def _bcr(p, name, x, stride=1, padding=0):
    """conv (no bias) -> batch norm (running statistics) -> relu."""
    w = p[name + ".conv.weight"]
    x = F.conv2d(x, w, None, stride=stride, padding=padding)
    x = F.batch_norm(x, p[name + ".bn.running_mean"], p[name + ".bn.running_var"],
                     p[name + ".bn.weight"], p[name + ".bn.bias"], training=False, eps=1e-3)
    return F.relu(x)


def _avg3(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def _block_a(p, m, x):
    a = _bcr(p, m + ".branch1x1", x)
    b = _bcr(p, m + ".branch5x5_2", _bcr(p, m + ".branch5x5_1", x), padding=2)
    c = _bcr(p, m + ".branch3x3dbl_1", x)
    c = _bcr(p, m + ".branch3x3dbl_2", c, padding=1)
    c = _bcr(p, m + ".branch3x3dbl_3", c, padding=1)
    d = _bcr(p, m + ".branch_pool", _avg3(x))
    return torch.cat([a, b, c, d], 1)


def _block_b(p, m, x):
    a = _bcr(p, m + ".branch3x3", x, stride=2)
    c = _bcr(p, m + ".branch3x3dbl_1", x)
    c = _bcr(p, m + ".branch3x3dbl_2", c, padding=1)
    c = _bcr(p, m + ".branch3x3dbl_3", c, stride=2)
    return torch.cat([a, c, F.max_pool2d(x, 3, 2)], 1)


def _block_c(p, m, x):
    h, v = (0, 3), (3, 0)  # padding of the 1x7 and 7x1 convs
    a = _bcr(p, m + ".branch1x1", x)
    b = _bcr(p, m + ".branch7x7_1", x)
    b = _bcr(p, m + ".branch7x7_2", b, padding=h)
    b = _bcr(p, m + ".branch7x7_3", b, padding=v)
    c = _bcr(p, m + ".branch7x7dbl_1", x)
    for i, pad in zip(range(2, 6), (v, h, v, h)):
        c = _bcr(p, f"{m}.branch7x7dbl_{i}", c, padding=pad)
    d = _bcr(p, m + ".branch_pool", _avg3(x))
    return torch.cat([a, b, c, d], 1)


def _block_d(p, m, x):
    a = _bcr(p, m + ".branch3x3_2", _bcr(p, m + ".branch3x3_1", x), stride=2)
    b = _bcr(p, m + ".branch7x7x3_1", x)
    b = _bcr(p, m + ".branch7x7x3_2", b, padding=(0, 3))
    b = _bcr(p, m + ".branch7x7x3_3", b, padding=(3, 0))
    b = _bcr(p, m + ".branch7x7x3_4", b, stride=2)
    return torch.cat([a, b, F.max_pool2d(x, 3, 2)], 1)


def _block_e(p, m, x, pool):
    a = _bcr(p, m + ".branch1x1", x)
    t = _bcr(p, m + ".branch3x3_1", x)
    b = torch.cat([_bcr(p, m + ".branch3x3_2a", t, padding=(0, 1)), _bcr(p, m + ".branch3x3_2b", t, padding=(1, 0))], 1)
    u = _bcr(p, m + ".branch3x3dbl_2", _bcr(p, m + ".branch3x3dbl_1", x), padding=1)
    c = torch.cat([_bcr(p, m + ".branch3x3dbl_3a", u, padding=(0, 1)), _bcr(p, m + ".branch3x3dbl_3b", u, padding=(1, 0))], 1)
    pooled = _avg3(x) if pool == "avg" else F.max_pool2d(x, 3, 1, 1)
    return torch.cat([a, b, c, _bcr(p, m + ".branch_pool", pooled)], 1)


def _inception_pool3(p, x):
    x = _bcr(p, "Conv2d_1a_3x3", x, stride=2)
    x = _bcr(p, "Conv2d_2a_3x3", x)
    x = _bcr(p, "Conv2d_2b_3x3", x, padding=1)
    x = F.max_pool2d(x, 3, 2)
    x = _bcr(p, "Conv2d_3b_1x1", x)
    x = _bcr(p, "Conv2d_4a_3x3", x)
    x = F.max_pool2d(x, 3, 2)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _block_a(p, m, x)
    x = _block_b(p, "Mixed_6a", x)
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _block_c(p, m, x)
    x = _block_d(p, "Mixed_7a", x)
    x = _block_e(p, "Mixed_7b", x, "avg")
    x = _block_e(p, "Mixed_7c", x, "max")
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


_WEIGHTS = {}


def _weights(path, dtype):
    key = (path, dtype)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        _WEIGHTS[key] = {k: v.to(dtype) for k, v in _read_safetensors(path).items()}
    return _WEIGHTS[key]


@op("fid_inception")
def fid_inception(i, a):
    """Images in [-1, 1] -> pool3, logits, unbiased logits. With raw=True the
    input goes straight into the network (no gray->RGB, no resize)."""
    x = i["x"]
    p = _weights(a["weights"], x.dtype)
    if not a.get("raw", False):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if tuple(x.shape[2:]) != (299, 299):
            x = resize_bilinear({"x": x}, {"size": [299, 299], "mode": a.get("mode", "half_pixel")})
    pool3 = _inception_pool3(p, x)
    w, b = p["fc.weight"], p["fc.bias"]
    return pool3, pool3 @ w.T + b, pool3 @ w.T


@op("cross_entropy")
def cross_entropy(i, a):
    return F.cross_entropy(i["logits"], i["labels"].long())
