//! The malloc policy of a process that runs for months on a box with little memory.
//!
//! glibc gives each thread that allocates its own arena, up to eight per core, and an arena
//! keeps what was freed in it for reuse by that arena alone. The daemon runs about a hundred
//! threads (GStreamer streaming threads, the async runtime, its blocking pool, which comes and
//! goes), so freed memory sat spread over a dozen arenas and the resident set crept up although
//! the live heap stayed flat (heaptrack over a soak). With two, freed memory is reused and the
//! soak's growth fell from +41 to +7 MiB/h; the contention it adds was within the soak's CPU
//! noise.
//!
//! glibc also raises its mmap threshold each time a large block is freed, up to 32 MiB, so the
//! decoded frames and video buffers (100–200 KiB each, all day) move into the arenas, where they
//! fragment them. A fixed threshold keeps them in their own mappings, returned on free: the soak
//! held 3.5 MiB less. The README's soak section has the figures.

/// Arenas the process may use; `MALLOC_ARENA_MAX` in the environment still wins.
const ARENAS: i32 = 2;

/// Blocks from this size up get a mapping of their own (glibc's initial threshold, kept fixed);
/// `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` in the environment still win.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Sets [`ARENAS`] and [`MMAP_THRESHOLD`], each unless the environment sets it. Call it first
/// in `main`, before any thread starts: a thread's arena is chosen at its first allocation.
pub fn set_malloc_policy() {
    #[cfg(target_env = "gnu")]
    {
        let set_by_env = |var: &str, tunable: &str| {
            std::env::var_os(var).is_some()
                || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(tunable))
        };
        // SAFETY: mallopt only sets a tunable of the allocator; it is called before other
        // threads exist, and a refusal (return 0) leaves glibc's default in place.
        unsafe {
            if !set_by_env("MALLOC_ARENA_MAX", "glibc.malloc.arena_max") {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
            if !set_by_env("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
        }
    }
}
