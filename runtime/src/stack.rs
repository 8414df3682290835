//! Give back the stack pages a deep call touched, once it has returned.
//!
//! A thread's stack pages stay in memory once touched, for the thread's
//! whole life. The shim's threads that answer task calls (tokio's
//! blocking pool) idle for seconds after a call, and the one that ran a
//! Create went about 70 KiB deep (spec, workload decision, compile cache,
//! the spawner's answer): about 60 KiB for nothing while it idles, and per
//! container when many are made at once. A wasm container's
//! process runs its guest on the stack libcontainer's init went deep on
//! (about 60 KiB touched, 15 needed). [`release_unused`] drops the pages
//! below the caller's frame.

use std::sync::OnceLock;

/// Pages this far below the caller's frame stay: the frames of the calls
/// made from here (madvise's) must not be dropped while they run. A page
/// dropped and touched again later (a signal's frame) just comes back
/// zeroed.
const MARGIN: usize = 4 * 1024;

/// The main thread's stack as glibc saw it from /proc at [`learn_main_stack`]
/// (lowest and highest address), inherited by the process's clones.
static MAIN_STACK: OnceLock<(usize, usize)> = OnceLock::new();

/// Learn where the main thread's stack lies, on the main thread, while
/// /proc is there to tell: the spawner does at its start, for the
/// containers cloned from it, where /proc is gone by the time it is asked.
pub fn learn_main_stack() {
    if is_main_thread() {
        if let Some(bounds) = stack_bounds() {
            let _ = MAIN_STACK.set(bounds);
        }
    }
}

/// Releases the stack below the frame it lives in when that frame returns:
/// one at the top of a request handler that goes deep.
pub struct ReleaseOnReturn;

impl Drop for ReleaseOnReturn {
    fn drop(&mut self) {
        release_unused();
    }
}

/// Drop the pages of the calling thread's stack below its current frame
/// (less [`MARGIN`]); touched again, they come back zeroed.
pub fn release_unused() {
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let page = page_size();
    let end = here.saturating_sub(MARGIN) / page * page;
    let lowest = match is_main_thread() {
        // Only on the stack learned: a process forked from another thread,
        // or cloned onto a stack of its own, runs its "main" thread on a
        // mapping that other mappings may adjoin.
        true => main_stack_lowest(MAIN_STACK.get().copied(), here, || mapped_below(end, page)),
        false => stack_bounds().map(|(low, _)| low),
    };
    let Some(lowest) = lowest else { return };
    let start = lowest.div_ceil(page) * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies within this thread's stack, below its
    // current frame by MARGIN: the stack grows down, so no live frame and
    // nothing borrowed is there, and only this thread uses it. MADV_DONTNEED
    // on private anonymous memory only makes its next touch a zeroed page.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

/// The lowest address of the main stack to release from: what `walk`
/// finds, when `here` lies within the stack `learned`, else None (and no
/// walk).
fn main_stack_lowest(learned: Option<(usize, usize)>, here: usize, walk: impl FnOnce() -> Option<usize>) -> Option<usize> {
    let (low, _) = learned.filter(|(low, high)| (*low..*high).contains(&here))?;
    Some(walk()?.max(low))
}

/// The lowest address of the mapping that holds the page below `end`:
/// the main thread's stack, whose bounds glibc would read from /proc
/// (hidden in a wasm container). Asks the kernel page by page: mincore
/// fails on unmapped memory, and the kernel keeps a gap of unmapped memory
/// below the main stack (stack_guard_gap), so the walk ends there. A
/// thread's stack has no such gap: never walk from one.
fn mapped_below(end: usize, page: usize) -> Option<usize> {
    let mut vec = 0u8;
    let mut lowest = None;
    let mut at = end.checked_sub(page)?;
    // SAFETY: mincore writes one byte for a one-page range into `vec`; it
    // reads no memory of ours, and fails (ENOMEM) where nothing is mapped.
    while unsafe { libc::mincore(at as *mut libc::c_void, page, &mut vec) } == 0 {
        lowest = Some(at);
        match at.checked_sub(page) {
            Some(below) => at = below,
            None => break,
        }
    }
    lowest
}

fn is_main_thread() -> bool {
    // SAFETY: gettid and getpid take no arguments.
    unsafe { libc::gettid() == libc::getpid() }
}

/// The calling thread's stack, lowest and highest address, or None when
/// glibc cannot say. For the main thread glibc reads /proc/self/maps.
fn stack_bounds() -> Option<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread;
    // only when it succeeds is `attr` read, then destroyed once.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        (got == 0 && !addr.is_null()).then_some((addr as usize, addr as usize + size))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn go_deep(depth: usize) -> u8 {
        let buffer = std::hint::black_box([depth as u8; 4096]);
        if depth == 0 { buffer[7] } else { go_deep(depth - 1).wrapping_add(buffer[9]) }
    }

    fn stack_rss_kib() -> usize {
        let (lowest, _) = stack_bounds().expect("a spawned thread's stack");
        let maps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut in_stack = false;
        for line in maps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (usize::from_str_radix(from, 16), usize::from_str_radix(to, 16)) {
                        in_stack = from <= lowest && lowest < to;
                        continue;
                    }
                }
            }
            if in_stack {
                if let Some(rss) = line.strip_prefix("Rss:") {
                    return rss.trim().trim_end_matches(" kB").trim().parse().expect("rss");
                }
            }
        }
        panic!("no mapping holds the thread's stack")
    }

    #[test]
    fn a_deep_call_s_pages_go_back_and_the_thread_goes_on() {
        std::thread::spawn(|| {
            std::hint::black_box(go_deep(64));
            let deep = stack_rss_kib();
            release_unused();
            let after = stack_rss_kib();
            assert!(deep >= 256, "the deep call touched {deep} KiB");
            assert!(after + 200 <= deep, "{deep} KiB before, {after} KiB after");
            // The stack is still usable, as deep as before.
            assert_eq!(go_deep(64), go_deep(64));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_test_thread_knows_its_stack() {
        // The harness runs each test on a thread of its own, not the main one.
        let (low, high) = stack_bounds().expect("bounds");
        let marker = 0u8;
        assert!((low..high).contains(&(std::hint::black_box(&marker) as *const u8 as usize)));
    }

    #[test]
    fn the_main_stack_is_walked_only_from_within_the_stack_learned() {
        let walked = std::cell::Cell::new(0);
        let walk = || {
            walked.set(walked.get() + 1);
            Some(0x1000)
        };
        // Nothing learned (a process forked from another thread, as with
        // HYBRID_SPAWNER=off): no walk.
        assert_eq!(main_stack_lowest(None, 0x9000, walk), None);
        // Learned, but the caller runs on another stack (a clone given a
        // stack of its own): no walk.
        assert_eq!(main_stack_lowest(Some((0x4000, 0x8000)), 0x9000, walk), None);
        assert_eq!(walked.get(), 0);
        // On it: what the walk found, never below the stack learned.
        assert_eq!(main_stack_lowest(Some((0x4000, 0x10000)), 0x9000, walk), Some(0x4000));
        assert_eq!(main_stack_lowest(Some((0x800, 0x10000)), 0x9000, walk), Some(0x1000));
        assert_eq!(walked.get(), 2);
    }
}
