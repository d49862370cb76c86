//! Server-side partition assignors of KIP-848 groups: `uniform` (the default: balanced and
//! sticky) and `range` (contiguous ranges of each topic, as the client-side RangeAssignor).
//!
//! Pure functions of (members, their subscriptions and current assignments, topic partition
//! counts): no clock, no randomness, members and partitions in sorted order, so the same input
//! always gives the same assignment.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use uuid::Uuid;

use crate::api::groups::Assignment;

pub const UNIFORM: &str = "uniform";
pub const RANGE: &str = "range";
pub const ASSIGNORS: &[&str] = &[UNIFORM, RANGE];

/// One member as the assignor sees it.
pub struct MemberSpec<'a> {
    pub member_id: &'a str,
    pub topics: &'a BTreeSet<String>,
    pub current: &'a Assignment,
}

/// Topic name -> (id, partition count), for the subscribed topics that exist.
pub type TopicSpecs = BTreeMap<String, (Uuid, i32)>;

fn load(counts: &BTreeMap<&str, usize>, member: &str) -> usize {
    counts.get(member).copied().unwrap_or(0)
}

/// Computes every member's target assignment; `members` sorted by member id.
pub fn assign(assignor: &str, members: &[MemberSpec<'_>], topics: &TopicSpecs) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members.iter().map(|m| (m.member_id.to_string(), Assignment::new())).collect();
    if members.is_empty() {
        return out;
    }
    let put = |out: &mut BTreeMap<String, Assignment>, m: &str, (t, p): (Uuid, i32)| {
        if let Some(a) = out.get_mut(m) {
            a.entry(t).or_default().insert(p);
        }
    };
    if assignor == RANGE {
        for (name, (id, count)) in topics {
            let subscribed: Vec<&MemberSpec<'_>> = members.iter().filter(|m| m.topics.contains(name)).collect();
            if subscribed.is_empty() {
                continue;
            }
            let n = subscribed.len() as i32;
            let (per, extra) = (count / n, count % n);
            let mut next = 0;
            for (i, m) in subscribed.iter().enumerate() {
                let take = per + i32::from((i as i32) < extra);
                for p in next..next + take {
                    put(&mut out, m.member_id, (*id, p));
                }
                next += take;
            }
        }
        return out;
    }
    let homogeneous = members.windows(2).all(|w| w[0].topics == w[1].topics);
    let partitions = |filter: &dyn Fn(&str) -> bool| -> Vec<(Uuid, i32)> {
        topics.iter().filter(|(n, _)| filter(n)).flat_map(|(_, (id, c))| (0..*c).map(move |p| (*id, p))).collect()
    };
    if homogeneous {
        let all = partitions(&|n| members[0].topics.contains(n));
        let valid: HashSet<(Uuid, i32)> = all.iter().copied().collect();
        let floor = all.len() / members.len();
        let mut extras = all.len() % members.len();
        let mut counts: BTreeMap<&str, usize> = members.iter().map(|m| (m.member_id, 0)).collect();
        let mut taken: HashSet<(Uuid, i32)> = HashSet::new();
        let owned = |m: &MemberSpec<'_>| -> Vec<(Uuid, i32)> {
            m.current.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p))).filter(|tp| valid.contains(tp)).collect()
        };
        // Sticky: each member keeps up to its quota of what it has.
        for m in members {
            for tp in owned(m) {
                if load(&counts, m.member_id) < floor && taken.insert(tp) {
                    put(&mut out, m.member_id, tp);
                    *counts.entry(m.member_id).or_default() += 1;
                }
            }
        }
        for m in members {
            if extras == 0 {
                break;
            }
            if let Some(tp) = owned(m).into_iter().find(|tp| !taken.contains(tp)) {
                taken.insert(tp);
                put(&mut out, m.member_id, tp);
                *counts.entry(m.member_id).or_default() += 1;
                extras -= 1;
            }
        }
        for tp in all.into_iter().filter(|tp| !taken.contains(tp)) {
            let under = members.iter().find(|m| load(&counts, m.member_id) < floor);
            let m = match under {
                Some(m) => m,
                None => match members.iter().find(|m| load(&counts, m.member_id) == floor && extras > 0) {
                    Some(m) => {
                        extras -= 1;
                        m
                    }
                    None => continue,
                },
            };
            put(&mut out, m.member_id, tp);
            *counts.entry(m.member_id).or_default() += 1;
        }
        return out;
    }
    // Different subscriptions: each partition to the least loaded subscriber (its current owner
    // when that one is not more loaded than the least loaded).
    let subscribed_somewhere = |n: &str| members.iter().any(|m| m.topics.contains(n));
    let mut counts: BTreeMap<&str, usize> = members.iter().map(|m| (m.member_id, 0)).collect();
    let names: BTreeMap<Uuid, &str> = topics.iter().map(|(n, (id, _))| (*id, n.as_str())).collect();
    // Partitions with the fewest possible owners first, so they do not end up crowded.
    let mut todo: Vec<(usize, Uuid, i32, Vec<&MemberSpec<'_>>)> = partitions(&subscribed_somewhere)
        .into_iter()
        .filter_map(|(t, p)| {
            let name = names.get(&t)?;
            let candidates: Vec<&MemberSpec<'_>> = members.iter().filter(|m| m.topics.contains(*name)).collect();
            Some((candidates.len(), t, p, candidates))
        })
        .collect();
    todo.sort_by_key(|(n, t, p, _)| (*n, *t, *p));
    for (_, t, p, candidates) in todo {
        let Some(min) = candidates.iter().map(|m| load(&counts, m.member_id)).min() else { continue };
        let owner = candidates
            .iter()
            .find(|m| m.current.get(&t).is_some_and(|ps| ps.contains(&p)) && load(&counts, m.member_id) <= min);
        let chosen = owner.or_else(|| candidates.iter().find(|m| load(&counts, m.member_id) == min));
        if let Some(m) = chosen {
            put(&mut out, m.member_id, (t, p));
            *counts.entry(m.member_id).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(spec: &[(&str, i32)]) -> TopicSpecs {
        spec.iter().enumerate().map(|(i, (n, c))| (n.to_string(), (Uuid::from_u128(i as u128 + 1), *c))).collect()
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(|s| s.len()).sum()
    }

    #[test]
    fn uniform_is_balanced_complete_and_sticky() {
        let ts = topics(&[("a", 4), ("b", 3)]);
        let subs: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let empty = Assignment::new();
        let first = assign(UNIFORM, &[MemberSpec { member_id: "m1", topics: &subs, current: &empty }], &ts);
        assert_eq!(count(&first["m1"]), 7);
        // Two more members: m1 keeps 3 of its 7, the others get 2 each; nothing twice.
        let ms = [
            MemberSpec { member_id: "m1", topics: &subs, current: &first["m1"] },
            MemberSpec { member_id: "m2", topics: &subs, current: &empty },
            MemberSpec { member_id: "m3", topics: &subs, current: &empty },
        ];
        let second = assign(UNIFORM, &ms, &ts);
        let counts: Vec<usize> = second.values().map(count).collect();
        assert_eq!(counts, vec![3, 2, 2]);
        for (t, ps) in &second["m1"] {
            assert!(ps.is_subset(&first["m1"][t]), "m1 keeps what it had");
        }
        let mut all: Vec<(Uuid, i32)> = second.values().flat_map(|a| a.iter().flat_map(|(t, ps)| ps.iter().map(|p| (*t, *p)))).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7);
        // Same input, same output.
        assert_eq!(assign(UNIFORM, &ms, &ts), second);
    }

    #[test]
    fn range_gives_contiguous_ranges_and_heterogeneous_uniform_respects_subscriptions() {
        let ts = topics(&[("a", 5), ("b", 2)]);
        let ab: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let a: BTreeSet<String> = ["a".to_string()].into();
        let empty = Assignment::new();
        let ms = [MemberSpec { member_id: "x", topics: &ab, current: &empty }, MemberSpec { member_id: "y", topics: &a, current: &empty }];
        let r = assign(RANGE, &ms, &ts);
        let a_id = ts["a"].0;
        let b_id = ts["b"].0;
        assert_eq!(r["x"][&a_id], [0, 1, 2].into());
        assert_eq!(r["y"][&a_id], [3, 4].into());
        assert_eq!(r["x"][&b_id], [0, 1].into());
        let u = assign(UNIFORM, &ms, &ts);
        assert!(!u["y"].contains_key(&b_id), "y is not subscribed to b");
        assert_eq!(count(&u["x"]) + count(&u["y"]), 7);
        assert!(count(&u["x"]).abs_diff(count(&u["y"])) <= 1);
    }
}
