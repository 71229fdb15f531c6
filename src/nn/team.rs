//! How the inference engine spreads a kernel's independent tasks over the
//! threads of the current rayon pool.
//!
//! A batch-1 pass at 224 px is ~60 parallel loops of 50–500 µs each. As
//! rayon loops, every one of them wakes the other worker (a futex wake-up
//! and, between loops, its yields): ~10% of a pass sat in the kernel's
//! scheduler (`perf`, BENCHMARKS §7.1d). A [`Team`] instead keeps the
//! helpers of one pass spinning from its first loop to its last, so a
//! loop costs a few atomic operations — what ONNX Runtime's and OpenMP's
//! thread pools do.
//!
//! Nothing here can deadlock on a busy pool: the caller claims tasks like
//! any helper, so a loop completes even if no helper ever starts, and a
//! helper never waits on anything but the next loop or the end of the pass.

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One loop's body, `f(task)`.
type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// Bits of a [`Team`] range word for its end and its next task.
const BITS: u32 = 20;
const MASK: u64 = (1 << BITS) - 1;
/// The largest loop generation a range word holds (its top 24 bits);
/// generations count 1, 2, …, `GENERATIONS`, 1, … (0 is "none yet").
const GENERATIONS: u64 = (1 << (64 - 2 * BITS)) - 1;

/// Where a kernel's tasks run.
#[derive(Clone, Copy)]
pub enum Par<'a> {
    /// A rayon parallel loop per call (what a pass on a busy pool, or one
    /// of several sample groups in flight at once, should use).
    Pool,
    /// The spinning team of one pass ([`with_team`]).
    Team(&'a Team),
}

impl Par<'_> {
    /// Threads the tasks may spread over.
    pub fn threads(self) -> usize {
        rayon::current_num_threads().max(1)
    }

    /// Runs `f(0)`, …, `f(n-1)`, each once, in any order and on any of the
    /// threads; returns when all have run.
    pub fn for_each(self, n: usize, f: impl Fn(usize) + Sync) {
        match self {
            _ if n <= 1 => (0..n).for_each(f),
            Par::Pool => (0..n).into_par_iter().for_each(&f),
            Par::Team(t) => t.for_each(n, &f),
        }
    }
}

/// The shared state of one pass's threads.
///
/// A loop's tasks are cut into one contiguous range per thread, and each
/// thread starts on its own range: the same thread then takes the same
/// part of every layer (the rows it wrote are the rows it reads next, in
/// its own L2). Claimed one by one (first its own range, then the
/// others'), they still balance. Claimed first come first served, the
/// rows of one layer went to either core: the depthwise layers of a
/// 224-px pass ran no faster on two threads than on one, reading their
/// input from the other core's cache.
pub struct Team {
    /// The current loop's generation, published after its ranges.
    generation: AtomicU64,
    /// Per thread: generation (high bits) | end | next task of its range.
    /// One word, so that a claim takes a task of the loop it read and
    /// never one of the next.
    ranges: Vec<AtomicU64>,
    /// The current loop's body: a `Task` on the caller's stack, valid while
    /// any of its tasks is unfinished.
    job: AtomicPtr<Task<'static>>,
    /// Finished tasks of the current loop.
    done: AtomicUsize,
    /// Set when the pass is over.
    stop: AtomicBool,
}

impl Team {
    fn new(threads: usize) -> Team {
        Team::from_generation(threads, 0)
    }

    /// A team whose last loop was `generation` (tests: the wrap-around).
    fn from_generation(threads: usize, generation: u64) -> Team {
        Team {
            generation: AtomicU64::new(generation),
            ranges: (0..threads.max(1)).map(|_| AtomicU64::new(0)).collect(),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Claims the next task of loop `generation` in range `r`, if any.
    fn claim_in(&self, r: usize, generation: u64) -> Option<usize> {
        let word = &self.ranges[r];
        let mut s = word.load(Ordering::Acquire);
        loop {
            let (g, end, i) = (s >> (2 * BITS), (s >> BITS) & MASK, s & MASK);
            if g != generation || i >= end {
                return None;
            }
            match word.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(i as usize),
                Err(now) => s = now,
            }
        }
    }

    /// Runs the tasks of loop `generation` that thread `me` can claim: its
    /// own range first, then the others'.
    fn work(&self, me: usize, generation: u64) {
        let n = self.ranges.len();
        for k in 0..n {
            let r = (me + k) % n;
            while let Some(i) = self.claim_in(r, generation) {
                self.run(i);
            }
        }
    }

    /// Runs the claimed task `i` of the current loop.
    fn run(&self, i: usize) {
        // SAFETY: the task is claimed and unfinished, so its loop's caller
        // is still in `for_each` and the body it stored is alive.
        let f = unsafe { *self.job.load(Ordering::Acquire) };
        f(i);
        self.done.fetch_add(1, Ordering::Release);
    }

    /// The caller's side of one loop (only the thread that made the team,
    /// thread 0, calls this).
    fn for_each(&self, n: usize, f: Task<'_>) {
        assert!((n as u64) < MASK, "{n} tasks in one loop");
        let generation = self.generation.load(Ordering::Relaxed) % GENERATIONS + 1;
        let body: *const Task<'_> = &f;
        self.job
            .store(body.cast::<Task<'static>>().cast_mut(), Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        let t = self.ranges.len();
        for (r, word) in self.ranges.iter().enumerate() {
            let (start, end) = ((r * n / t) as u64, ((r + 1) * n / t) as u64);
            word.store(
                (generation << (2 * BITS)) | (end << BITS) | start,
                Ordering::Relaxed,
            );
        }
        // Publishes the body, the reset count and the ranges.
        self.generation.store(generation, Ordering::Release);
        self.work(0, generation);
        while self.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
    }

    /// Helper `me`'s side: every loop's unclaimed tasks until the pass ends.
    fn help(&self, me: usize) {
        let mut seen = 0;
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            if generation != seen {
                self.work(me, generation);
                seen = generation;
            } else if self.stop.load(Ordering::Acquire) {
                return;
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Runs `f` with a team of the current pool's threads: the other workers
/// spin as helpers until `f` returns (or panics). On a one-thread pool,
/// `f` gets [`Par::Pool`].
pub fn with_team<R: Send>(f: impl FnOnce(Par<'_>) -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        return f(Par::Pool);
    }
    struct Stop<'a>(&'a Team);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Release);
        }
    }
    let team = Team::new(threads);
    rayon::in_place_scope(|s| {
        for me in 1..threads {
            let team = &team;
            s.spawn(move |_| team.help(me));
        }
        let _stop = Stop(&team);
        f(Par::Team(&team))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Every task of every loop runs exactly once, and a loop's writes are
    /// all visible to the next loop (each loop reads the previous one's).
    #[test]
    fn team_runs_each_task_once_in_loop_order() {
        for threads in 1..=4 {
            let sums = pool(threads).install(|| {
                with_team(|par| {
                    let cells: Vec<AtomicUsize> = (0..257).map(|_| AtomicUsize::new(0)).collect();
                    let mut sums = Vec::new();
                    for round in 0..200usize {
                        let n = 1 + round % 257;
                        par.for_each(n, |i| {
                            cells[i].fetch_add(round + 1, Ordering::Relaxed);
                        });
                        // Each of the first n cells got round + 1 exactly once.
                        sums.push(
                            cells
                                .iter()
                                .map(|c| c.load(Ordering::Relaxed))
                                .sum::<usize>(),
                        );
                    }
                    sums
                })
            });
            let mut want = 0;
            for (round, &got) in sums.iter().enumerate() {
                want += (1 + round % 257) * (round + 1);
                assert_eq!(got, want, "{threads} threads, loop {round}");
            }
        }
    }

    /// Loop generations wrap around within the range words' 24 bits
    /// without losing a loop.
    #[test]
    fn team_generations_wrap_around() {
        pool(2).install(|| {
            let team = Team::from_generation(2, GENERATIONS - 3);
            let hits = AtomicUsize::new(0);
            rayon::in_place_scope(|s| {
                let t = &team;
                s.spawn(move |_| t.help(1));
                for _ in 0..8 {
                    Par::Team(t).for_each(5, |_| {
                        hits.fetch_add(1, Ordering::Relaxed);
                    });
                }
                team.stop.store(true, Ordering::Release);
            });
            assert_eq!(hits.into_inner(), 40);
            assert_eq!(team.generation.load(Ordering::Relaxed), 5);
        });
    }

    /// A team made on a pool whose other workers are all busy still
    /// finishes: the caller runs every task itself.
    #[test]
    fn team_finishes_when_no_helper_is_free() {
        let p = pool(2);
        let total = p.install(|| {
            let (a, b) = rayon::join(
                || {
                    with_team(|par| {
                        let hits = AtomicUsize::new(0);
                        for _ in 0..50 {
                            par.for_each(7, |_| {
                                hits.fetch_add(1, Ordering::Relaxed);
                            });
                        }
                        hits.into_inner()
                    })
                },
                || {
                    with_team(|par| {
                        let hits = AtomicUsize::new(0);
                        par.for_each(3, |_| {
                            hits.fetch_add(1, Ordering::Relaxed);
                        });
                        hits.into_inner()
                    })
                },
            );
            a + b
        });
        assert_eq!(total, 353);
    }
}
