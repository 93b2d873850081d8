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
import scipy.linalg
import scipy.special


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
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
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
