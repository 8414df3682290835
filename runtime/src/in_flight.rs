//! A count of work still in flight that a process about to exit waits for:
//! the shim's queued events, the state directories removed after Delete.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct InFlight {
    count: Mutex<usize>,
    changed: Condvar,
}

impl InFlight {
    pub const fn new() -> Self {
        Self { count: Mutex::new(0), changed: Condvar::new() }
    }

    /// One more piece of work started.
    pub fn started(&self) {
        self.add(1);
    }

    /// One piece of work done (or given up on).
    pub fn done(&self) {
        self.add(-1);
    }

    fn add(&self, n: isize) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_add_signed(n);
        self.changed.notify_all();
    }

    /// Wait until none is in flight, at most `limit`; false when some still are.
    pub fn wait_for_none(&self, limit: Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, _) = self.changed.wait_timeout_while(count, limit, |n| *n > 0).unwrap_or_else(|p| p.into_inner());
        *count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_last_piece_is_done_or_the_limit() {
        let work = std::sync::Arc::new(InFlight::new());
        assert!(work.wait_for_none(Duration::ZERO), "nothing started");
        work.started();
        assert!(!work.wait_for_none(Duration::from_millis(10)), "one in flight");
        let other = work.clone();
        let thread = std::thread::spawn(move || other.done());
        assert!(work.wait_for_none(Duration::from_secs(5)), "done in another thread");
        thread.join().unwrap();
    }
}
