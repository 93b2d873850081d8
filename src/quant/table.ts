// The zero-overhead inference table: every TDQ module evaluated once at every
// timestep of the schedule, so sampling looks step sizes up instead of running
// the MLPs. One StepTable per activation quantizer (stored under its key as
// 'step_table', shape (T)); together they are the [T x quantizers] table.
//
// Lookup rule: an integer timestep k in [0, T-1] returns entry k exactly (the
// MLP's own output at k, bit for bit). A fractional timestep, as DPM-Solver
// passes (model time in [0, T-1]), interpolates linearly between the entries
// at floor(t) and ceil(t), in float64 then rounded to float32: the step sizes
// are smooth in t, and linear interpolation tracks the MLP far better than
// rounding to the nearest entry. Timesteps outside [0, T-1] (beyond a 1e-6
// tolerance for float round-off) are errors.

export class StepTable {
  constructor(readonly values: Float32Array) {
    if (!(values instanceof Float32Array) || values.length < 1) throw new TypeError('StepTable: values must be a non-empty Float32Array');
    for (let i = 0; i < values.length; ++i)
      if (!(values[i] > 0) || !Number.isFinite(values[i])) throw new RangeError(`StepTable: entry ${i} is ${values[i]}; step sizes must be positive and finite`);
  }

  /** The number of timesteps T. */
  get length(): number {
    return this.values.length;
  }

  /** The step size at model time t (see the lookup rule above). */
  at(t: number): number {
    const T = this.values.length;
    if (!Number.isFinite(t) || t < -1e-6 || t > T - 1 + 1e-6)
      throw new RangeError(`StepTable: timestep ${t} is outside [0, ${T - 1}]`);
    const c = Math.min(Math.max(t, 0), T - 1);
    const k = Math.floor(c);
    const frac = c - k;
    if (frac === 0) return this.values[k];
    const a = this.values[k], b = this.values[k + 1];
    return Math.fround(a + (b - a) * frac);
  }

  /** Step sizes for a batch of timesteps. */
  lookup(tValues: ArrayLike<number>): Float32Array {
    const out = new Float32Array(tValues.length);
    for (let i = 0; i < tValues.length; ++i) out[i] = this.at(tValues[i]);
    return out;
  }
}
