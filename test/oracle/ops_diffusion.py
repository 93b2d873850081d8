"""Oracle for src/diffusion: LDM's schedule tables and DDIM step selection, the
DPM-Solver reference's discrete-time conversion, and float64 runs of the
deterministic samplers on the analytic Gaussian model.

Written from the published algorithms (LDM's make_beta_schedule /
register_schedule / make_ddim_timesteps / make_ddim_sampling_parameters /
PLMSSampler, DPM-Solver's NoiseScheduleVP('discrete') and Algorithm 2 of
DPM-Solver++), in the upstream structure, not in the engine's folded-coefficient
form, so a slip in either shows up as a mismatch.

Float64 tables travel as two float32 tensors, hi = f32(x) and lo = f32(x - hi),
so the test can compare them to ~1e-14 relative despite the float32 transport.
"""
import numpy as np
import torch
from oracle import op


def split64(a):
    a = np.asarray(a, dtype=np.float64)
    hi = a.astype(np.float32)
    lo = (a - hi.astype(np.float64)).astype(np.float32)
    return torch.from_numpy(hi), torch.from_numpy(lo)


def beta_schedule(a):
    kind = a.get("schedule", "linear")
    n = int(a.get("n_timestep", 1000))
    ls, le, cs = a.get("linear_start", 1e-4), a.get("linear_end", 2e-2), a.get("cosine_s", 8e-3)
    if kind == "linear":  # LDM "linear": linear in sqrt(beta)
        b = torch.linspace(ls ** 0.5, le ** 0.5, n, dtype=torch.float64) ** 2
    elif kind == "ddpm_linear":  # LDM "sqrt_linear": linear in beta
        b = torch.linspace(ls, le, n, dtype=torch.float64)
    elif kind == "cosine":
        ts = torch.arange(n + 1, dtype=torch.float64) / n + cs
        al = torch.cos(ts / (1 + cs) * np.pi / 2).pow(2)
        al = al / al[0]
        b = torch.clamp(1 - al[1:] / al[:-1], min=0, max=0.999)
    else:
        raise ValueError(kind)
    return b.numpy()


def tables(a):
    betas = beta_schedule(a)
    v = a.get("v_posterior", 0.0)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    acp = np.append(1.0, ac[:-1])
    pv = (1 - v) * betas * (1.0 - acp) / (1.0 - ac) + v * betas
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": acp,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(acp) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac),
    }


TABLE_ROWS = list(tables({"n_timestep": 2}).keys())


@op("ldm_schedule")
def ldm_schedule(i, a):
    t = tables(a)
    return split64(np.stack([t[k] for k in TABLE_ROWS]))


def ddim_timesteps(method, s, n):
    if method == "uniform":
        c = n // s
        ts = np.asarray(list(range(0, n, c)))
    elif method == "quad":
        ts = ((np.linspace(0, np.sqrt(n * 0.8), s)) ** 2).astype(int)
    else:
        raise ValueError(method)
    return ts + 1


def ddim_params(ac, ts, eta):
    alphas = ac[ts]
    alphas_prev = np.asarray([ac[0]] + ac[ts[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    return sigmas, alphas, alphas_prev


@op("ddim_schedule")
def ddim_schedule(i, a):
    ac = tables(a)["alphas_cumprod"]
    ts = ddim_timesteps(a["method"], int(a["steps"]), len(ac))
    sig, al, alp = ddim_params(ac, ts, float(a.get("eta", 0.0)))
    hi, lo = split64(np.stack([al, alp, sig]))
    return torch.from_numpy(ts.astype(np.int32)), hi, lo


class DiscreteVP:
    """DPM-Solver's NoiseScheduleVP('discrete'): log alpha piecewise linear in t_cont in [1/N, 1]."""

    def __init__(self, ac):
        self.N = len(ac)
        self.t_array = np.linspace(0.0, 1.0, self.N + 1)[1:]
        self.log_alpha_array = 0.5 * np.log(ac)

    def log_alpha(self, t):
        return np.interp(t, self.t_array, self.log_alpha_array)

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def sigma(self, t):
        return np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * np.log(1.0 - np.exp(2.0 * la))

    def inverse_lambda(self, lam):
        la = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return np.interp(la, self.log_alpha_array[::-1], self.t_array[::-1])

    def model_time(self, t):
        # The reference feeds (t - 1/N) * 1000; the engine uses * N (equal for N = 1000).
        return (t - 1.0 / self.N) * self.N


def dpm_times(vp, steps, skip):
    if skip == "time_uniform":
        return np.linspace(1.0, 1.0 / vp.N, steps + 1)
    if skip == "logSNR":
        return vp.inverse_lambda(np.linspace(vp.lam(1.0), vp.lam(1.0 / vp.N), steps + 1))
    raise ValueError(skip)


@op("dpm_timesteps")
def dpm_timesteps(i, a):
    vp = DiscreteVP(tables(a)["alphas_cumprod"])
    ts = dpm_times(vp, int(a["steps"]), a["skip_type"])
    return split64(vp.model_time(ts))


def gaussian_eps(mu, sigma, abar):
    def eps(x):
        v2 = abar * sigma ** 2 + 1 - abar
        return np.sqrt(1 - abar) * (x - np.sqrt(abar) * mu) / v2
    return eps


@op("gaussian_sampler")
def gaussian_sampler(i, a):
    """x_T (B, D), mu (D), sigma (D) -> x_0 of a deterministic sampler, float64 throughout."""
    x = i["x_T"].numpy().astype(np.float64)
    mu, sigma = i["mu"].numpy().astype(np.float64), i["sigma"].numpy().astype(np.float64)
    ac = tables(a)["alphas_cumprod"]
    steps = int(a["steps"])
    sampler = a["sampler"]
    if sampler in ("ddim", "plms"):
        ts = ddim_timesteps(a.get("method", "uniform"), steps, len(ac))
        sig, al, alp = ddim_params(ac, ts, 0.0)
        n = len(ts)

        def transfer(x, e, index):  # LDM's get_x_prev_and_pred_x0 with sigma = 0
            pred_x0 = (x - np.sqrt(1 - al[index]) * e) / np.sqrt(al[index])
            return np.sqrt(alp[index]) * pred_x0 + np.sqrt(1.0 - alp[index] - sig[index] ** 2) * e

        old = []
        for i_step, t in enumerate(ts[::-1]):
            index = n - 1 - i_step
            t_next = ts[::-1][min(i_step + 1, n - 1)]
            e = gaussian_eps(mu, sigma, ac[t])(x)
            if sampler == "ddim":
                x = transfer(x, e, index)
                continue
            if len(old) == 0:
                x_mid = transfer(x, e, index)
                e_prime = (e + gaussian_eps(mu, sigma, ac[t_next])(x_mid)) / 2
            elif len(old) == 1:
                e_prime = (3 * e - old[-1]) / 2
            elif len(old) == 2:
                e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
            else:
                e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
            x = transfer(x, e_prime, index)
            old.append(e)
            if len(old) >= 4:
                old.pop(0)
        return torch.from_numpy(x)
    if sampler == "dpmpp":
        vp = DiscreteVP(ac)
        ts = dpm_times(vp, steps, a.get("skip_type", "time_uniform"))
        lower_final = a.get("lower_order_final", True) and steps < 10

        def data_pred(x, t):
            abar = np.exp(2 * vp.log_alpha(t))
            e = gaussian_eps(mu, sigma, abar)(x)
            return (x - vp.sigma(t) * e) / vp.alpha(t)

        prev_d, prev_t = None, None
        for k in range(steps):
            s, t = ts[k], ts[k + 1]
            d = data_pred(x, s)
            h = vp.lam(t) - vp.lam(s)
            order = 1 if prev_d is None or (lower_final and k == steps - 1) else 2
            if order == 1:
                D = d
            else:
                r = (vp.lam(s) - vp.lam(prev_t)) / h
                D = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * prev_d
            x = vp.sigma(t) / vp.sigma(s) * x - vp.alpha(t) * np.expm1(-h) * D
            prev_d, prev_t = d, s
        return torch.from_numpy(x)
    raise ValueError(sampler)
