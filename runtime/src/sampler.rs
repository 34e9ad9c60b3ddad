//! Turns a row of logits into the next token: greedy, or seeded sampling with temperature, top-k
//! and top-p — the same seed and logits always give the same token.

use crate::RuntimeError;

/// How the next token is chosen. `temperature == 0` is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values that have no meaning, naming the option.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(RuntimeError::Request(format!(
                "--temperature must be ≥ 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(RuntimeError::Request(format!(
                "--top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// A small, fast, seedable random stream (SplitMix64): the same seed gives the same numbers on
/// every platform, which is what reproducible sampling needs.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler with its own deterministic random stream.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler, RuntimeError> {
        params.validate()?;
        let rng = SplitMix64::new(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Picks the next token from `logits`; non-finite logits are an error, never a silent pick.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, RuntimeError> {
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::Request(format!(
                "logit {i} is {} (the model produced non-finite values)",
                logits[i]
            )));
        }
        if logits.is_empty() {
            return Err(RuntimeError::Request("empty logits row".into()));
        }
        let p = &self.params;
        if p.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| (((logits[i as usize] - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs.iter().position(|q| {
                cum += q;
                cum >= p.top_p as f64
            });
            probs.truncate(keep.map_or(probs.len(), |k| k + 1));
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_unit() * total;
        for (i, q) in probs.iter().enumerate() {
            if r < *q {
                return Ok(order[i]);
            }
            r -= q;
        }
        Ok(order[probs.len() - 1])
    }
}

/// Index of the largest value; the lowest index wins ties (as torch.argmax does).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn greedy_is_argmax_with_first_tie() {
        let mut s = sampler(0.0, 0, 1.0, 1);
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 3.0]).unwrap(), 1);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_follows_probabilities() {
        let logits = [0.0f32, (3.0f32).ln(), -100.0];
        let draw = |seed| {
            let mut s = sampler(1.0, 0, 1.0, seed);
            let mut counts = [0usize; 3];
            for _ in 0..4000 {
                counts[s.sample(&logits).unwrap() as usize] += 1;
            }
            counts
        };
        let (a, b) = (draw(7), draw(7));
        assert_eq!(a, b);
        let frac = a[1] as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "p(token 1) ≈ 0.75, got {frac}");
        assert_eq!(a[2], 0);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [5.0f32, 4.9, 4.8, 0.0];
        let mut s = sampler(1.0, 1, 1.0, 3);
        assert!((0..100).all(|_| s.sample(&logits).unwrap() == 0));
        let mut s = sampler(1.0, 0, 0.3, 3);
        assert!(
            (0..100).all(|_| s.sample(&logits).unwrap() == 0),
            "top-p 0.3 keeps only the first"
        );
        let mut s = sampler(5.0, 2, 1.0, 3);
        assert!((0..200).all(|_| s.sample(&logits).unwrap() < 2));
    }

    #[test]
    fn bad_options_and_nan_are_errors() {
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        let err = sampler(0.0, 0, 1.0, 0)
            .sample(&[0.0, f32::NAN])
            .unwrap_err();
        assert!(err.to_string().contains("logit 1"));
    }
}
