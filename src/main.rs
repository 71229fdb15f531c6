fn main() -> std::process::ExitCode {
    keep_freed_buffers();
    ofa::cli::main()
}

/// A training step allocates and frees the same few hundred activation
/// and gradient buffers every step, most of them larger than glibc's mmap
/// threshold: each came from a fresh `mmap` and was returned with `munmap`
/// at the end of the step, so every page of every buffer was faulted in and
/// zeroed by the kernel again on the next step (a fifth of the smallest
/// subnet's step at 224 px in `perf`). Serving every allocation from the
/// heap and never trimming it lets the next step reuse the same pages.
/// The cost is that the process keeps its peak heap until it exits, which
/// is what a training or benchmark process needs anyway.
///
/// One arena for all threads: the commands run on a rayon worker
/// (`cli::main`), and a worker's own arena lives in 64 MB mmap'd heaps
/// that glibc shrinks with `MADV_DONTNEED` whatever the trim threshold, so
/// the largest subnet's step at 224 px was 19% slower there than on the
/// main thread; with the main arena it is as fast (the two threads'
/// allocations rarely contend: a few hundred per step).
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
