//! Events to containerd, published in order (create → start → exit →
//! delete, as containerd requires) by one task of the shim's ttrpc runtime,
//! so that no RPC waits on containerd.
//!
//! containerd-shim's RemotePublisher holds a synchronous ttrpc client,
//! whose receiving thread polls its socket every 10 ms to notice a close:
//! about 100 wakeups a second and 0.5% of a core for every idle shim
//! (measured: 5 ticks of 10 ms in 10 s), which a node of idle containers
//! pays per container. The asynchronous client waits on the socket in the
//! runtime's reactor instead.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::r#async::transport::Socket;
use std::sync::Arc;
use std::time::Duration;

use hybrid_runtime::in_flight::InFlight;

use crate::whole_frames::WholeFrames;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;

/// The protobuf package of containerd's task events (events/task.proto).
const EVENTS_PACKAGE: &str = "containerd.events";

pub struct Event {
    pub topic: &'static str,
    /// The event, packed as containerd reads it from the envelope.
    pub message: Any,
}

/// `message` packed with its type's full name. The name is made from the
/// package and the message's own name, not from its descriptor: the
/// descriptor of events/task.proto (and of every file it imports) is built
/// at its first use, and that was about 0.5 ms of the shim's runtime worker
/// before it could answer its first Create (perf samples of protobuf's
/// FileDescriptorBuilding and SourceCodeInfo parsing in the ttrpc thread).
fn pack<M: Message>(message: &M) -> Result<Any, containerd_shim::protos::protobuf::Error> {
    Ok(Any { type_url: format!("{EVENTS_PACKAGE}.{}", M::NAME), value: message.write_to_bytes()?, ..Default::default() })
}

#[derive(Clone)]
pub struct EventSender {
    tx: UnboundedSender<Event>,
    /// The events sent and not yet forwarded (or given up on).
    pending: Arc<InFlight>,
    /// Tells the task to connect (see `connect_now`).
    connect: Arc<Notify>,
}

impl EventSender {
    /// Publish to containerd's ttrpc socket at `address` (TTRPC_ADDRESS)
    /// from a task on `runtime`; connected when told (`connect_now`) or at
    /// the first event, and again after a failure (containerd restarted).
    pub fn spawn(runtime: &tokio::runtime::Handle, address: String, namespace: String) -> Self {
        let (tx, mut rx) = unbounded_channel::<Event>();
        let pending = Arc::new(InFlight::new());
        let done = pending.clone();
        let connect_told = Arc::new(Notify::new());
        let told = connect_told.clone();
        runtime.spawn(async move {
            // Connected once told (the first call, or the first event).
            // Not at once: containerd's first Create is already waiting
            // when the shim starts serving, and this runtime's one worker
            // would connect (0.3 ms) before it reads that call.
            told.notified().await;
            let mut client = connect(&address).await.ok().map(EventsClient::new);
            while let Some(event) = rx.recv().await {
                let topic = event.topic;
                let request = match forward_request(&namespace, event) {
                    Ok(request) => request,
                    Err(e) => {
                        tracing::warn!(topic, "cannot publish event: {e}");
                        done.done();
                        continue;
                    }
                };
                // Once more on a new connection: the old one may be to a
                // containerd that has since restarted.
                for attempt in 0..2 {
                    if client.is_none() {
                        client = match connect(&address).await {
                            Ok(connected) => Some(EventsClient::new(connected)),
                            Err(e) => {
                                tracing::warn!(topic, "cannot connect to containerd at {address} to publish: {e}");
                                break;
                            }
                        };
                    }
                    let Some(connected) = &client else { break };
                    match connected.forward(Context::default(), &request).await {
                        Ok(_) => break,
                        Err(e) => {
                            client = None;
                            if attempt == 1 {
                                tracing::warn!(topic, "cannot publish event: {e}");
                            }
                        }
                    }
                }
                done.done();
            }
        });
        Self { tx, pending, connect: connect_told }
    }

    /// Connect to containerd now, on the runtime's worker: told as a call
    /// starts on a thread of its own (Create on the blocking pool), so
    /// that the connection is made while the call runs, not between its
    /// answer and the next call, where containerd would accept it before
    /// it takes the call's event.
    pub fn connect_now(&self) {
        self.connect.notify_one();
    }

    /// Publish `message` (one of containerd's task events) under `topic`.
    pub fn send<M: Message>(&self, topic: &'static str, message: M) {
        let message = match pack(&message) {
            Ok(packed) => packed,
            Err(e) => return tracing::warn!(topic, "cannot encode event: {e}"),
        };
        self.pending.started();
        self.connect_now();
        if self.tx.send(Event { topic, message }).is_err() {
            self.pending.done();
            tracing::warn!(topic, "event task is gone, event dropped");
        }
    }

    /// Wait until every event sent so far is forwarded (or given up on),
    /// at most `limit`; false when some are still queued. For a shim about
    /// to exit, whose last events (a TaskDelete) would otherwise be lost.
    /// Not from the runtime's own threads: it blocks.
    pub fn flush(&self, limit: Duration) -> bool {
        self.pending.wait_for_none(limit)
    }
}

fn forward_request(namespace: &str, event: Event) -> Result<ForwardRequest, containerd_shim::Error> {
    let mut envelope = Envelope::new();
    envelope.set_topic(event.topic.to_string());
    envelope.set_namespace(namespace.to_string());
    envelope.set_timestamp(containerd_shim::util::timestamp()?);
    envelope.set_event(event.message);
    let mut request = ForwardRequest::new();
    request.set_envelope(envelope);
    Ok(request)
}

/// A client of containerd's ttrpc socket at `address`, whose frames
/// reach containerd whole (see crate::whole_frames).
async fn connect(address: &str) -> Result<Client, containerd_shim::protos::ttrpc::Error> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.contains("://") || path.starts_with('@') {
        return Client::connect(&socket_address(address)).await;
    }
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| containerd_shim::protos::ttrpc::Error::Others(format!("cannot connect to {path}: {e}")))?;
    Ok(Client::new(Socket::new(WholeFrames::new(stream))))
}

/// containerd hands its ttrpc socket as a path; ttrpc wants a scheme.
fn socket_address(address: &str) -> String {
    match address.contains("://") {
        true => address.to_string(),
        false => format!("unix://{address}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_packed_with_their_descriptors_full_names() {
        use containerd_shim::protos::events::task::*;
        use containerd_shim::protos::protobuf::MessageFull;
        fn check<M: MessageFull + Default>() {
            let packed = pack(&M::default()).expect("packed");
            assert_eq!(packed.type_url, M::descriptor().full_name(), "{}", M::NAME);
        }
        check::<TaskCreate>();
        check::<TaskStart>();
        check::<TaskDelete>();
        check::<TaskExit>();
        check::<TaskOOM>();
        check::<TaskExecAdded>();
        check::<TaskExecStarted>();
        check::<TaskPaused>();
        check::<TaskResumed>();
        let exit = TaskExit { container_id: "c".into(), pid: 7, exit_status: 3, ..Default::default() };
        let packed = pack(&exit).expect("packed");
        assert_eq!(TaskExit::parse_from_bytes(&packed.value).expect("parsed"), exit);
    }

    #[test]
    fn a_socket_path_gets_the_unix_scheme_and_an_address_keeps_its_own() {
        assert_eq!(socket_address("/run/containerd/containerd.sock.ttrpc"), "unix:///run/containerd/containerd.sock.ttrpc");
        assert_eq!(socket_address("unix:///a.sock"), "unix:///a.sock");
    }
}
