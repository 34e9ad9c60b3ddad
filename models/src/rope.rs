//! RoPE inverse frequencies, computed in f32 step by step as `transformers` computes them
//! (`modeling_rope_utils.py`), so our positions rotate by the same angles as the reference.
//! Every scaling scheme lives here; the graph's `Rope` op only ever sees `inv_freq`.

use crate::config::{RopeConfig, RopeScaling};

/// `inv_freq` of length `rotary_dim / 2` for the given RoPE parameters.
pub fn inv_freq(rope: &RopeConfig) -> Vec<f32> {
    let dim = rope.rotary_dim as f32;
    let base = rope.theta as f32;
    // `1.0 / (base ** (arange(0, dim, 2).float() / dim))`: the exponent is an f32 division, the
    // power is rounded once to f32 (f64 `powf` rounds correctly where f32 libm may not).
    let mut inv: Vec<f32> = (0..rope.rotary_dim)
        .step_by(2)
        .map(|i| {
            let exponent = i as f32 / dim;
            1.0 / (f64::from(base).powf(f64::from(exponent)) as f32)
        })
        .collect();
    match rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            let factor = factor as f32;
            inv.iter_mut().for_each(|f| *f /= factor);
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_context = original_max_position_embeddings as f64;
            let low_freq_wavelen = (old_context / low_freq_factor) as f32;
            let high_freq_wavelen = (old_context / high_freq_factor) as f32;
            let two_pi = (2.0 * std::f64::consts::PI) as f32;
            let band = (high_freq_factor - low_freq_factor) as f32;
            let (factor, low, old) = (factor as f32, low_freq_factor as f32, old_context as f32);
            for f in &mut inv {
                let wavelen = two_pi / *f;
                if wavelen > low_freq_wavelen {
                    *f /= factor;
                } else if wavelen >= high_freq_wavelen {
                    let smooth = (old / wavelen - low) / band;
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-exact against `transformers` 5.23 (`ROPE_INIT_FUNCTIONS`, torch 2.15, CPU), whose
    /// values are given as f32 bits.
    fn check(rope: RopeConfig, want_bits: &[u32]) {
        let got = inv_freq(&rope);
        assert_eq!(got.len(), want_bits.len());
        for (i, (g, &w)) in got.iter().zip(want_bits).enumerate() {
            assert_eq!(
                g.to_bits(),
                w,
                "inv_freq[{i}] = {g:e}, transformers has {:e}",
                f32::from_bits(w)
            );
        }
    }

    #[test]
    fn default_matches_transformers() {
        let rope = RopeConfig {
            theta: 10000.0,
            rotary_dim: 16,
            scaling: RopeScaling::None,
        };
        check(
            rope,
            &[
                0x3f800000, 0x3ea1e89b, 0x3dcccccd, 0x3d0186e3, 0x3c23d70a, 0x3b4f3e38, 0x3a83126f,
                0x39a5cb60,
            ],
        );
    }

    #[test]
    fn linear_divides_by_factor() {
        let rope = RopeConfig {
            theta: 10000.0,
            rotary_dim: 32,
            scaling: RopeScaling::Linear { factor: 2.0 },
        };
        let got = inv_freq(&rope);
        // Hand-computed: 1/10000^(2i/32) / 2.
        assert_eq!(got[0], 0.5);
        assert!((got[8] - 0.005).abs() < 1e-9, "{}", got[8]);
        check(
            rope,
            &[
                0x3f000000, 0x3e8ff59a, 0x3e21e89b, 0x3db61887, 0x3d4ccccd, 0x3ce655c2, 0x3c8186e3,
                0x3c11ad39, 0x3ba3d70a, 0x3b38449c, 0x3acf3e38, 0x3a691528, 0x3a03126f, 0x39936a16,
                0x3925cb60, 0x38ba7753,
            ],
        );
    }

    fn llama3(rotary_dim: usize, factor: f64, old: usize) -> RopeConfig {
        RopeConfig {
            theta: 500000.0,
            rotary_dim,
            scaling: RopeScaling::Llama3 {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: old,
            },
        }
    }

    #[test]
    fn llama3_bands_by_hand() {
        // head_dim 16, θ = 5e5, old context 64: wavelengths 2π·5e5^(i/8). Pair 0 (2π < 16) is
        // kept; pair 1 (2π·5.13 ≈ 32.2, between 16 and 64) is smoothed; pair 2 on (≈ 1337 > 64)
        // is divided by 8.
        let got = inv_freq(&llama3(16, 8.0, 64));
        assert_eq!(got[0], 1.0);
        let base1 = 500000f64.powf(-2.0 / 16.0);
        let smooth = (64.0 * base1 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        let want1 = (1.0 - smooth) * base1 / 8.0 + smooth * base1;
        assert!(
            (f64::from(got[1]) - want1).abs() < 1e-6 * want1,
            "{} vs {want1}",
            got[1]
        );
        let want2 = 500000f64.powf(-4.0 / 16.0) / 8.0;
        assert!(
            (f64::from(got[2]) - want2).abs() < 1e-6 * want2,
            "{} vs {want2}",
            got[2]
        );
    }

    #[test]
    fn llama3_matches_transformers() {
        check(
            llama3(16, 8.0, 64),
            &[
                0x3f800000, 0x3da29e0c, 0x3b9a08c8, 0x3a6ef74f, 0x39395d21, 0x380fc8f8, 0x36df10c4,
                0x35ad07a7,
            ],
        );
        // Llama 3.2's parameters (head_dim 64, factor 32, old context 8192).
        check(
            llama3(64, 32.0, 8192),
            &[
                0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad,
                0x3d681e67, 0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402,
                0x3b527720, 0x3aa9279b, 0x39e13620, 0x38cb98f7, 0x37a3418d, 0x3758ac81, 0x370fc8f8,
                0x36bed4f4, 0x367d45c3, 0x3628126b, 0x35df10c4, 0x359406cb, 0x35447610, 0x35025f34,
                0x34ad07a7, 0x3465a54d, 0x341864a7, 0x33ca41b0,
            ],
        );
    }
}
