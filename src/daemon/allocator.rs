//! The malloc policy of a process that runs for months on a box with little memory.
//!
//! glibc gives each thread that allocates its own arena, up to eight per core, and an arena
//! keeps what was freed in it for reuse by that arena alone. The daemon runs about a hundred
//! threads (GStreamer streaming threads, the async runtime, its blocking pool, which comes and
//! goes), so freed memory sat spread over a dozen arenas and the resident set crept up although
//! the live heap stayed flat (heaptrack over a soak). With two, freed memory is reused and the
//! soak's growth fell from +41 to +7 MiB/h; the contention it adds was within the soak's CPU
//! noise. The README's soak section has the figures.

/// Arenas the process may use; `MALLOC_ARENA_MAX` in the environment still wins.
const ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`ARENAS`], unless `MALLOC_ARENA_MAX` is set. Call it first in
/// `main`, before any thread starts: a thread's arena is chosen at its first allocation.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the allocator; it is called before other
        // threads exist, and a refusal (return 0) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}
