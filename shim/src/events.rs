//! Events to containerd, published from one thread so that they keep the
//! order containerd requires (create → start → exit → delete) and no RPC
//! waits on containerd.

use std::sync::mpsc::{channel, Sender};

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;

pub struct Event {
    pub topic: &'static str,
    pub message: Box<dyn MessageDyn>,
}

#[derive(Clone)]
pub struct EventSender {
    tx: Sender<Event>,
}

impl EventSender {
    pub fn spawn(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, rx) = channel::<Event>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for event in rx {
                    let ctx = containerd_shim::Context::default();
                    if let Err(e) = publisher.publish(ctx, event.topic, &namespace, event.message) {
                        tracing::warn!(topic = event.topic, "cannot publish event: {e}");
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the event thread: {e}"));
        Self { tx }
    }

    pub fn send(&self, topic: &'static str, message: impl MessageDyn) {
        if self.tx.send(Event { topic, message: Box::new(message) }).is_err() {
            tracing::warn!(topic, "event thread is gone, event dropped");
        }
    }
}
