// Small references shared by the integer-kernel tests (qconv, qconv_fused, qnorm).

/** Round half to even, as the kernels' rint / nearbyint in the default rounding mode. */
export function rne(v: number): number {
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** min over x of silu(x) = x / (1 + exp(-x)), as float32: the real zero point of SiLU outputs. */
export const SILU_MIN = Math.fround(-0.2784645427610738);
