//! What each topic costs in object-store requests: the agent's PUTs and GETs, and their bytes,
//! counted by topic on `/metrics`.
//!
//! - `sidestream_object_store_topic_requests_total{topic, request="put"|"get"}`
//! - `sidestream_object_store_topic_bytes_total{topic, request="put"|"get"}`
//!
//! A PUT (every attempt, as the provider bills it) is counted once for each topic whose data the
//! object holds, and its bytes are split exactly between them, so that per topic "requests per
//! GB" is what that topic's traffic makes: an uploaded object holds a little of many topics,
//! and a topic's share of the upload requests is one request per object it is in. A GET (a read
//! cache miss of a fetch) is counted for the topic it was made for; a GET of the compaction
//! job, like a PUT, once for each topic whose data it read. Deleting objects is not counted by
//! topic: an object is deleted when nothing references it any more, and the store no longer
//! knows whose data it held.
//!
//! The label set is bounded: the first [`TOPIC_SERIES_MAX`] topics seen get their own series,
//! the rest are counted under [`OTHER_TOPICS`] (as `sidestream_stored_topic_bytes`). A deleted
//! topic's series stay (counters only grow) until the process restarts.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::agent::client::ControllerClient;
use crate::api::TopicRef;
use crate::metrics::{self, Bounded, Counter};

/// Topics with their own series; the rest share [`OTHER_TOPICS`].
pub const TOPIC_SERIES_MAX: usize = metrics::TOPIC_LABELS_MAX;
pub const OTHER_TOPICS: &str = metrics::OTHER;

/// One topic's counters.
pub struct TopicCost {
    pub put_requests: Arc<Counter>,
    pub put_bytes: Arc<Counter>,
    pub get_requests: Arc<Counter>,
    pub get_bytes: Arc<Counter>,
}

impl TopicCost {
    fn new(topic: &str) -> Self {
        let requests = |request| {
            metrics::counter(
                "sidestream_object_store_topic_requests_total",
                "Object store requests made for a topic's data (a PUT once for each topic in the object).",
                &[("topic", topic), ("request", request)],
            )
        };
        let bytes = |request| {
            metrics::counter(
                "sidestream_object_store_topic_bytes_total",
                "Bytes of a topic's data written to (put) or read from (get) the object store.",
                &[("topic", topic), ("request", request)],
            )
        };
        Self { put_requests: requests("put"), put_bytes: bytes("put"), get_requests: requests("get"), get_bytes: bytes("get") }
    }

    /// One GET of `bytes` made for this topic.
    pub fn get(&self, bytes: u64) {
        self.get_requests.inc();
        self.get_bytes.add(bytes);
    }
}

/// The counters of the topic named `topic` (its own, or the shared [`OTHER_TOPICS`] ones once
/// [`TOPIC_SERIES_MAX`] topics have theirs). Looked up on every fetch of a partition.
pub fn by_name(topic: &str) -> Arc<TopicCost> {
    static TOPICS: Bounded<TopicCost> = Bounded::new(TOPIC_SERIES_MAX, |t| Arc::new(TopicCost::new(t)));
    TOPICS.get(topic)
}

/// The counters of the topic with id `topic_id` (a deleted or unknown one: [`OTHER_TOPICS`]).
pub fn by_id(controller: &dyn ControllerClient, topic_id: Uuid) -> Arc<TopicCost> {
    match controller.topic(TopicRef::Id(topic_id)) {
        Some(meta) => by_name(&meta.name),
        None => by_name(OTHER_TOPICS),
    }
}

/// Each topic's bytes among `extents` (topic id, bytes).
pub fn bytes_by_topic(extents: impl IntoIterator<Item = (Uuid, u64)>) -> HashMap<Uuid, u64> {
    let mut by_topic: HashMap<Uuid, u64> = HashMap::new();
    for (topic_id, bytes) in extents {
        *by_topic.entry(topic_id).or_default() += bytes;
    }
    by_topic
}

/// Counts one PUT of an object holding `bytes_by_topic` (each topic's bytes in it).
pub fn count_put(controller: &dyn ControllerClient, bytes_by_topic: &HashMap<Uuid, u64>) {
    for (topic_id, bytes) in bytes_by_topic {
        let cost = by_id(controller, *topic_id);
        cost.put_requests.inc();
        cost.put_bytes.add(*bytes);
    }
}

/// Counts one GET of a span holding `bytes_by_topic` (each topic's bytes in it).
pub fn count_get(controller: &dyn ControllerClient, bytes_by_topic: &HashMap<Uuid, u64>) {
    for (topic_id, bytes) in bytes_by_topic {
        by_id(controller, *topic_id).get(*bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_beyond_the_bound_share_one_series() {
        let topics: Bounded<TopicCost> = Bounded::new(3, |t| Arc::new(TopicCost::new(t)));
        let mine = topics.get("cost-test-a");
        mine.get(10);
        assert!(Arc::ptr_eq(&mine, &topics.get("cost-test-a")));
        topics.get("cost-test-b");
        topics.get("cost-test-c");
        let late = topics.get("cost-test-late");
        assert!(Arc::ptr_eq(&late, &topics.get(OTHER_TOPICS)));
        assert!(Arc::ptr_eq(&late, &topics.get("cost-test-later")));
        let text = metrics::render();
        assert!(text.contains("sidestream_object_store_topic_requests_total{request=\"get\",topic=\"cost-test-a\"} 1"), "{text}");
        assert!(text.contains("sidestream_object_store_topic_bytes_total{request=\"get\",topic=\"cost-test-a\"} 10"), "{text}");
        assert!(!text.contains("cost-test-late"), "{text}");
    }
}
