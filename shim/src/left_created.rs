//! A container left Created gets its limits once its init is ready, not
//! only at its Start.
//!
//! A wasm container's Create is answered as soon as its init is forked
//! (hybrid_runtime's ready_later.rs); the rest of it, the container's
//! cgroup limits, is done by the first call that needs it: Start, which
//! comes within milliseconds from containerd's CRI plugin and from ctr. A
//! task created and not started (by a client that creates ahead, or that
//! gave up) showed its cgroups to Stats without the spec's limits until
//! then. A task of the shim's looks [`LOOK_AFTER`] after Create, and as
//! often until the init has told its readiness; after a Start it finds
//! nothing left to do.

use std::time::Duration;

use hybrid_runtime::Settled;

use crate::state::Shared;

/// How long after Create (and then how often) the container is looked at.
const LOOK_AFTER: Duration = Duration::from_millis(100);

/// Finish container `id`'s Create on `runtime` if it is still not started
/// once its init is ready.
pub fn settle_later(runtime: &tokio::runtime::Handle, state: Shared, id: String) {
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(LOOK_AFTER).await;
            let (state, id) = (state.clone(), id.clone());
            // The limits' writes are off the runtime's one worker thread.
            let again = tokio::task::spawn_blocking(move || settle(&state, &id)).await.unwrap_or(false);
            if !again {
                return;
            }
        }
    });
}

/// Settle `id` if it is there and not started; whether to look again.
fn settle(state: &Shared, id: &str) -> bool {
    let mut st = state.lock();
    let Some(entry) = st.containers.get_mut(id) else { return false };
    if entry.init.started {
        return false;
    }
    match entry.container.settle() {
        Settled::Done => false,
        Settled::NotYet => true,
        Settled::Failed(e) => {
            tracing::warn!(id = %id, "the container cannot be started: {e}");
            false
        }
    }
}
