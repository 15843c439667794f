//! The process's allocator, tuned for tensors.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, logits)
//! again and again. glibc's allocator, by default, hands the pages of a freed buffer back to
//! the OS, so the next step faults fresh zeroed pages into the same sizes: on a 2-core CPU that
//! costs about a fifth of a SmolLM2 LoRA step. [`retain_freed_memory`] keeps them instead.
//! It is a process-wide setting, so it is the binary's call: the `mtrl` CLI and the benchmarks
//! make it at start.

/// Tunes glibc's allocator to keep freed memory for reuse rather than return it to the OS
/// (no trimming of the heaps' free tops, large buffers from the heaps up to glibc's 32 MiB
/// ceiling). Peak memory is unchanged: what is kept is what the next step allocates again.
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
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            trim == 1 && pad == 1 && mmap == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
