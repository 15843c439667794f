//! The process's allocator, tuned for tensors.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, logits)
//! again and again. glibc's allocator, by default, hands the pages of a freed buffer back to
//! the OS, so the next step faults fresh zeroed pages into the same sizes: on a 2-core CPU that
//! costs about a fifth of a SmolLM2 LoRA step. [`retain_freed_memory`] keeps them instead.
//! It is a process-wide setting, so it is the binary's call: the `mtrl` CLI and the benchmarks
//! make it at start.

/// Tunes glibc's allocator to keep freed memory for reuse rather than return it to the OS:
/// no trimming of the heaps' free tops, and every buffer from the heaps, however large. glibc
/// would otherwise map each buffer above its 32 MiB ceiling afresh and unmap it on free, so
/// the tied embedding's gradient, the logits and the optimiser's temporaries (100+ MiB each
/// for SmolLM2) were faulted in again at every step: about 290k page faults, a tenth of a
/// full fine-tuning step on 2 cores. Peak memory stays close: what is kept is what the next
/// step allocates again (SmolLM2 full fine-tuning, 2 × 256: 2.63 → 2.88 GiB).
/// Returns whether the settings were applied; `false` off glibc (musl, macOS, Windows), where
/// it does nothing. Call it once, before the first tensor is allocated.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's thresholds (glibc takes its own lock);
        // the parameter numbers are glibc's and the values in range.
        #[allow(unsafe_code)]
        unsafe {
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            let pad = libc::mallopt(libc::M_TOP_PAD, 256 << 20);
            // No buffer is mapped on its own, whatever its size (so no mapping threshold
            // applies): a thread's arena hands what its 64 MiB heaps cannot hold to the main
            // heap.
            let mapped = libc::mallopt(libc::M_MMAP_MAX, 0);
            trim == 1 && pad == 1 && mapped == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The process's peak resident memory in GiB (`VmHWM` of `/proc/self/status`), for
/// benchmarks; `None` where the kernel does not report it (off Linux).
pub fn peak_resident_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}
