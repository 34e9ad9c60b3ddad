//! Host memory read bandwidth, measured the way a decode step reads weights: every thread streams
//! its own disjoint slice of a buffer far larger than any cache, once per pass. `tessera bench`
//! divides this by the bytes a decode token reads to get the memory-bandwidth roofline.

use std::hint::black_box;
use std::time::Instant;

/// The buffer streamed per pass: 1 GiB, well above the last-level cache of any host we run on, so
/// every pass reads DRAM.
pub const BUFFER_BYTES: usize = 1 << 30;

/// Passes timed; the median is reported, so one disturbed pass does not move the figure.
pub const PASSES: usize = 5;

/// Median read bandwidth in GB/s (10⁹ bytes per second) of `threads` threads streaming a
/// `bytes`-byte buffer `passes` times, after one untimed warm-up pass.
pub fn measure_gb_s(threads: usize, bytes: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let words = (bytes / 8).max(threads);
    let mut buffer = vec![0u64; words];
    let chunk = words.div_ceil(threads);
    // Written by the threads that will read it (first touch places pages on their node) and with
    // non-zero values: untouched zero pages all map the same physical page and would read from cache.
    std::thread::scope(|s| {
        for (t, part) in buffer.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (i, w) in part.iter_mut().enumerate() {
                    *w = (t * chunk + i) as u64 | 1;
                }
            });
        }
    });
    let read_bytes = (words * 8) as f64;
    let pass = |buffer: &[u64]| {
        let start = Instant::now();
        std::thread::scope(|s| {
            for part in buffer.chunks(chunk) {
                s.spawn(move || black_box(sum(black_box(part))));
            }
        });
        read_bytes / start.elapsed().as_secs_f64() / 1e9
    };
    pass(&buffer);
    let mut rates: Vec<f64> = (0..passes.max(1)).map(|_| pass(&buffer)).collect();
    median(&mut rates)
}

/// Wrapping sum with eight independent accumulators, so the loop is bound by loads, not by one
/// add chain (and vectorizes).
fn sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let blocks = words.chunks_exact(8);
    let tail: u64 = blocks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    for block in blocks {
        for (a, &w) in acc.iter_mut().zip(block) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

/// The median of `values` (the mean of the middle two for an even count); NaN for none.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_covers_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum(&words), 21 * 22 / 2);
        assert_eq!(sum(&[u64::MAX, 2]), 1, "wraps instead of overflowing");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn a_small_buffer_gives_a_positive_rate() {
        // Cache-resident, so the figure means nothing; the code path (chunking, threads) is tested.
        assert!(measure_gb_s(3, 1 << 16, 2) > 0.0);
    }
}
