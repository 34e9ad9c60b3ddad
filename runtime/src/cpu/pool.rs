//! A small persistent thread pool that splits one kernel launch's groups across threads.
//!
//! Decode runs ~150 launches per token, each a few microseconds to a millisecond, so workers are
//! started once and reused: between launches they spin briefly (the next launch usually follows
//! within microseconds) and then park on a condvar. The caller runs chunks too, so a pool of `n`
//! threads has `n - 1` workers. Chunks are claimed from one atomic cursor tagged with the launch's
//! generation, so a worker that wakes late takes nothing from a launch that has finished (the
//! caller returns as soon as every chunk is done, without waiting for workers to check in) nor
//! from the next one with a stale job.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The work of one launch: `f` runs a range of group ids.
type Work = dyn Fn(Range<u64>) + Sync;

/// How long an idle worker spins for the next launch before parking.
const SPIN: Duration = Duration::from_micros(50);

/// Chunks per thread a launch is split into: more than one balances uneven groups and a core
/// taken by another process, few enough that claiming stays cheap.
const CHUNKS_PER_THREAD: u64 = 4;

/// The launch being run, as the caller published it.
#[derive(Clone, Copy)]
struct Job {
    /// Lifetime-erased: valid until the caller sees every chunk done (see [`Pool::run`]).
    work: *const Work,
    groups: u64,
    chunks: u64,
    /// Threads that take part, the caller included; workers with a higher index skip the job.
    threads: usize,
}

struct State {
    job: Option<Job>,
    generation: u64,
    /// Workers parked on `wake`.
    sleepers: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Mirror of `State::generation` that spinning workers read without the lock.
    generation: AtomicU64,
    /// `generation << 32 | next chunk index` of the current job.
    cursor: AtomicU64,
    /// Chunks of the current job finished.
    done: AtomicUsize,
    done_lock: Mutex<()>,
    done_cv: Condvar,
}

// SAFETY: `Job::work` is only dereferenced for chunks claimed under the job's generation, and the
// caller keeps the closure alive until all of those chunks are done; everything else is Sync.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shared {}

/// A pool of `threads` threads (the caller and `threads - 1` workers) that runs each launch's
/// groups in contiguous chunks.
pub(crate) struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `threads - 1` workers (none for one thread: launches then run on the caller).
    pub(crate) fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                generation: 0,
                sleepers: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            generation: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            done_lock: Mutex::new(()),
            done_cv: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tessera-cpu-{index}"))
                    .spawn(move || worker(&shared, index))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            threads,
            shared,
            workers,
        })
    }

    /// Threads launches are split across, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` over `0..groups` split into contiguous chunks, on up to all threads, and
    /// returns when every group has run. `work` must not panic (it runs generated code, which
    /// cannot): a panicking chunk would never be counted done.
    pub(crate) fn run(&mut self, groups: u64, work: &(dyn Fn(Range<u64>) + Sync + '_)) {
        let chunks = groups.min(self.threads as u64 * CHUNKS_PER_THREAD);
        if chunks <= 1 || self.threads == 1 {
            work(0..groups);
            return;
        }
        let threads = (self.threads as u64).min(chunks) as usize;
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; the pointer is used for chunks claimed under this
        // launch's generation, all finished before this function returns (see the wait below).
        let work_ptr = unsafe {
            std::mem::transmute::<&(dyn Fn(Range<u64>) + Sync + '_), &'static Work>(work)
        } as *const Work;
        let job = Job {
            work: work_ptr,
            groups,
            chunks,
            threads,
        };
        let generation = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.generation += 1;
            state.job = Some(job);
            shared.done.store(0, Ordering::Relaxed);
            shared
                .cursor
                .store(state.generation << 32, Ordering::Release);
            shared.generation.store(state.generation, Ordering::Release);
            if state.sleepers > 0 {
                shared.wake.notify_all();
            }
            state.generation
        };
        run_chunks(shared, generation, &job);
        let finished = || shared.done.load(Ordering::Acquire) == chunks as usize;
        let start = Instant::now();
        while !finished() && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        if !finished() {
            let mut guard = shared.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            while !finished() {
                guard = shared
                    .done_cv
                    .wait(guard)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.shutdown = true;
            state.generation += 1;
            self.shared
                .generation
                .store(state.generation, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            // A worker only runs generated code, which does not panic; nothing to report.
            let _ = w.join();
        }
    }
}

/// A worker's loop: wait for a new generation, take part in its job when its index is among the
/// job's threads, repeat until shutdown.
fn worker(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let start = Instant::now();
        while shared.generation.load(Ordering::Acquire) == seen && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let (generation, job) = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.generation == seen && !state.shutdown {
                state.sleepers += 1;
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                state.sleepers -= 1;
            }
            if state.shutdown {
                return;
            }
            (state.generation, state.job)
        };
        seen = generation;
        if let Some(job) = job.filter(|j| index < j.threads) {
            run_chunks(shared, generation, &job);
        }
    }
}

/// Claims and runs chunks of `job` while its generation is current and chunks are left.
fn run_chunks(shared: &Shared, generation: u64, job: &Job) {
    loop {
        let cur = shared.cursor.load(Ordering::Acquire);
        let chunk = cur & 0xffff_ffff;
        if cur >> 32 != generation & 0xffff_ffff || chunk >= job.chunks {
            break;
        }
        if shared
            .cursor
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        let range = chunk * job.groups / job.chunks..(chunk + 1) * job.groups / job.chunks;
        // SAFETY: the chunk was claimed under the job's generation, so the caller is still
        // waiting for it and the closure is alive.
        unsafe { (*job.work)(range) };
        if shared.done.fetch_add(1, Ordering::AcqRel) + 1 == job.chunks as usize {
            // The caller may be parked: wake it under its lock so the wake-up is not lost.
            let _guard = shared.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.done_cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_runs_exactly_once_across_many_launches() {
        for threads in [1, 2, 3, 5] {
            let mut pool = Pool::new(threads).unwrap();
            for groups in [0u64, 1, 2, 3, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..groups).map(|_| AtomicUsize::new(0)).collect();
                pool.run(groups, &|range: Range<u64>| {
                    for g in range {
                        hits[g as usize].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {groups} groups"
                );
            }
        }
    }
}
