//! Which broker Kafka clients are told leads each partition and coordinates each group.
//!
//! - **Sidecar mode** (default): this agent is the only broker, leader of every partition.
//! - **Cluster mode** (`[agent] cluster_mode`, agents as a shared tier behind a load balancer):
//!   the brokers are the live agents the controller knows (registered and heartbeating, this
//!   one always included), and each partition's leader is chosen among them by rendezvous
//!   hashing: the agent with the highest hash of (topic id, partition, node id). An agent
//!   joining or leaving moves only the partitions it wins or held, and every agent with the same
//!   view of the live set names the same leaders. **Zone first:** when the client's `client.id`
//!   contains `sidestream_az=<zone>` and some live agent has that `[agent] zone`, leaders are
//!   chosen among that zone's agents only.
//!
//! Leadership is advice to clients, not ownership: every agent accepts produce and fetch for
//! every partition (the controller orders commits), so a client with an outdated view is never
//! refused.
//!
//! Must not touch: Kafka message types (the handlers build responses from [`Brokers`]).

use uuid::Uuid;

use super::Agent;
use crate::api::{ListenerAddress, LiveAgent};

/// The `client.id` marker naming the client's zone: `...sidestream_az=<zone>...`.
const ZONE_MARKER: &str = "sidestream_az=";

/// The zone a client names in its `client.id`, if any: the text after `sidestream_az=` up to
/// the next `,`, `;`, `&` or whitespace.
pub fn client_zone(client_id: &str) -> Option<&str> {
    let at = client_id.find(ZONE_MARKER)? + ZONE_MARKER.len();
    let rest = &client_id[at..];
    let end = rest.find(|c: char| c == ',' || c == ';' || c == '&' || c.is_whitespace()).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|z| !z.is_empty())
}

/// FNV-1a, then a final mix (splitmix64): a hash every agent computes the same, whatever its
/// build (std's hashers promise no stability across releases).
fn score(key: &[u8], node_id: i32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(&node_id.to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The brokers one client is shown, and who leads what for it.
#[derive(Debug, Clone)]
pub struct Brokers {
    /// Sorted by node id, never empty.
    pub agents: Vec<LiveAgent>,
    /// This agent's node id.
    pub me: i32,
    /// Indexes into `agents` that leaders are chosen from (the client's zone, else all).
    candidates: Vec<usize>,
}

impl Brokers {
    /// What `client_id`, connected to the listener `listener`, is told by `agent`: every agent
    /// with its address on that listener (agents without one are left out, as in Kafka).
    pub fn for_client(agent: &Agent, listener: &ListenerAddress, client_id: &str) -> Self {
        let s = &agent.settings;
        let me = LiveAgent {
            node_id: s.node_id,
            host: listener.host.clone(),
            port: listener.port,
            zone: s.zone.clone(),
            listeners: Vec::new(),
        };
        let live = if s.cluster_mode { agent.controller.live_agents() } else { Vec::new() };
        let live = live
            .into_iter()
            .filter_map(|a| {
                let (host, port) = a.address(&listener.name)?;
                Some(LiveAgent { host: host.to_string(), port, listeners: Vec::new(), ..a })
            })
            .collect();
        Self::new(me, live, client_zone(client_id))
    }

    /// `me` is always listed (a client talking to it knows it is up), with its own address.
    pub fn new(me: LiveAgent, live: Vec<LiveAgent>, zone: Option<&str>) -> Self {
        let my_id = me.node_id;
        let mut agents: Vec<LiveAgent> = live.into_iter().filter(|a| a.node_id != my_id).collect();
        agents.push(me);
        agents.sort_by_key(|a| a.node_id);
        let in_zone: Vec<usize> = match zone {
            Some(z) => (0..agents.len()).filter(|&i| agents[i].zone.as_deref() == Some(z)).collect(),
            None => Vec::new(),
        };
        let candidates = if in_zone.is_empty() { (0..agents.len()).collect() } else { in_zone };
        Self { agents, me: my_id, candidates }
    }

    fn pick(&self, key: &[u8]) -> &LiveAgent {
        let best = self
            .candidates
            .iter()
            .map(|&i| &self.agents[i])
            .max_by_key(|a| (score(key, a.node_id), std::cmp::Reverse(a.node_id)));
        best.unwrap_or(&self.agents[0])
    }

    /// The node id of the partition's leader.
    pub fn leader(&self, topic_id: Uuid, partition: i32) -> i32 {
        let mut key = [0u8; 20];
        key[..16].copy_from_slice(topic_id.as_bytes());
        key[16..].copy_from_slice(&partition.to_be_bytes());
        self.pick(&key).node_id
    }

    /// The coordinator named for a group or transactional id. Any agent can coordinate (the
    /// state is in the controller); spreading keys spreads the connections.
    pub fn coordinator(&self, key: &str) -> &LiveAgent {
        self.pick(key.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn agent(node_id: i32, zone: &str) -> LiveAgent {
        LiveAgent { node_id, host: "h".into(), port: 9000 + node_id, zone: Some(zone.into()), listeners: Vec::new() }
    }

    #[test]
    fn zone_marker_in_client_ids() {
        assert_eq!(client_zone("app,sidestream_az=us-east-1a"), Some("us-east-1a"));
        assert_eq!(client_zone("sidestream_az=b,other=1"), Some("b"));
        assert_eq!(client_zone("x sidestream_az=b;y"), Some("b"));
        assert_eq!(client_zone("rdkafka"), None);
        assert_eq!(client_zone("sidestream_az="), None);
    }

    #[test]
    fn leadership_spreads_and_moves_only_what_it_must() {
        let all: Vec<LiveAgent> = (1..=3).map(|i| agent(i, "a")).collect();
        let b = Brokers::new(all[0].clone(), all.clone(), None);
        let topic = Uuid::from_u128(7);
        let leaders: Vec<i32> = (0..300).map(|p| b.leader(topic, p)).collect();
        let mut counts = HashMap::new();
        for l in &leaders {
            *counts.entry(*l).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n > 60), "uneven spread: {counts:?}");
        // Every agent with the same view names the same leaders.
        let from_3 = Brokers::new(all[2].clone(), all.clone(), None);
        assert!((0..300).all(|p| from_3.leader(topic, p) == leaders[p as usize]));
        // Agent 2 leaves: only its partitions move.
        let without_2 = Brokers::new(all[0].clone(), vec![all[0].clone(), all[2].clone()], None);
        for (p, &l) in leaders.iter().enumerate() {
            let now = without_2.leader(topic, p as i32);
            if l == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, l, "partition {p} moved although its leader stayed");
            }
        }
    }

    #[test]
    fn zone_first_when_the_zone_has_live_agents() {
        let live = vec![agent(1, "a"), agent(2, "b"), agent(3, "b")];
        let b = Brokers::new(live[0].clone(), live.clone(), Some("b"));
        let topic = Uuid::from_u128(9);
        let leaders: Vec<i32> = (0..100).map(|p| b.leader(topic, p)).collect();
        assert!(leaders.iter().all(|&l| l == 2 || l == 3));
        assert!(leaders.contains(&2) && leaders.contains(&3));
        assert_eq!(b.agents.len(), 3, "every live agent is still listed");
        // An unknown zone: all agents.
        let c = Brokers::new(live[0].clone(), live.clone(), Some("z"));
        assert!((0..100).any(|p| c.leader(topic, p) == 1));
        assert!(["g1", "g2", "g3", "g4"].iter().all(|g| b.coordinator(g).zone.as_deref() == Some("b")));
    }

    #[test]
    fn this_agent_is_always_listed_with_its_own_address() {
        let me = agent(5, "a");
        let b = Brokers::new(me.clone(), Vec::new(), None);
        assert_eq!(b.agents, vec![me.clone()]);
        assert_eq!(b.leader(Uuid::nil(), 0), 5);
        let stale = LiveAgent { port: 1, ..me.clone() };
        let b = Brokers::new(me.clone(), vec![stale, agent(1, "a")], None);
        assert_eq!(b.agents.iter().map(|a| (a.node_id, a.port)).collect::<Vec<_>>(), vec![(1, 9001), (5, 9005)]);
    }
}
