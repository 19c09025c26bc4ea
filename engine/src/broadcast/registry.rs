//! A worker's part of the key and topic tables: names to the slab keys of its connections.
//!
//! Each connection remembers what it is bound to (in `Conn::subs`, allocated only once it
//! binds or subscribes), so closing it removes it from every table in O(its bindings).
//! Membership is a hash lookup on both sides, so a connection's N-th binding costs the same
//! as its first (a `Vec` scan made N subscriptions cost O(N²)), and so does the N-th of a
//! key's connections leaving it (a `Vec` of slots per key made N connections of one key
//! closing cost O(N²) when they left in an unlucky order). A per-connection cap ([`Caps`],
//! from `Config`) bounds how many names one connection can hold.

use std::collections::{HashMap, HashSet};

/// Key and topic membership on one worker.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    keys: Table,
    topics: Table,
    caps: Caps,
    /// In a cluster: told when a name gets its first connection here or loses its last
    /// (the node's interest in its subject).
    pub(crate) watch: Option<Box<dyn Interest>>,
}

/// Most keys and topics one connection may hold (0: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) keys: usize,
    pub(crate) topics: usize,
}

/// What one connection is bound to.
#[derive(Debug, Default)]
pub(crate) struct Subs {
    pub(crate) keys: HashSet<Box<str>>,
    pub(crate) topics: HashSet<Box<str>>,
    /// A cap was already reported in the log for this connection (one line per connection,
    /// not one per refused name).
    logged_cap: bool,
}

/// The outcome of a bind or subscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// Newly bound.
    Yes,
    /// It already was.
    Already,
    /// Refused: the connection holds as many names as its cap allows.
    Full,
}

type Table = HashMap<Box<str>, HashSet<u32>>;

/// Which table a name lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Key,
    Topic,
}

/// Told when a name gets its first connection on this worker or loses its last: in a
/// cluster, the node's interest in the name's subject (`cluster::Watch`). A trait, so that
/// the tables, a layer below the cluster, need not name it.
pub(crate) trait Interest: std::fmt::Debug + Send {
    fn changed(&self, kind: Kind, name: &str, on: bool);
}

/// Adds `slot` under `name`; tells the watch (a cluster) when `name` gets its first
/// connection on this worker.
fn add(table: &mut Table, watch: &Option<Box<dyn Interest>>, kind: Kind, name: &str, slot: u32) {
    match table.get_mut(name) {
        Some(set) => {
            set.insert(slot);
        }
        None => {
            table.insert(name.into(), HashSet::from([slot]));
            if let Some(w) = watch {
                w.changed(kind, name, true);
            }
        }
    }
}

/// Removes `slot` from under `name`; tells the watch when `name` loses its last connection
/// on this worker.
fn remove(table: &mut Table, watch: &Option<Box<dyn Interest>>, kind: Kind, name: &str, slot: u32) {
    if let Some(set) = table.get_mut(name) {
        set.remove(&slot);
        if set.is_empty() {
            table.remove(name);
            if let Some(w) = watch {
                w.changed(kind, name, false);
            }
        }
    }
}

fn under(cap: usize, len: usize) -> bool {
    cap == 0 || len < cap
}

impl Registry {
    /// An empty registry with per-connection caps.
    pub(crate) fn with_caps(caps: Caps) -> Registry {
        Registry {
            caps,
            ..Registry::default()
        }
    }

    /// Binds `slot` to `key`.
    pub(crate) fn bind(&mut self, subs: &mut Subs, slot: u32, key: &str) -> Added {
        if subs.keys.contains(key) {
            return Added::Already;
        }
        if !under(self.caps.keys, subs.keys.len()) {
            subs.log_cap(slot, "keys", self.caps.keys);
            return Added::Full;
        }
        subs.keys.insert(key.into());
        add(&mut self.keys, &self.watch, Kind::Key, key, slot);
        Added::Yes
    }

    /// Unbinds `slot` from `key`; false if it was not bound.
    pub(crate) fn unbind(&mut self, subs: &mut Subs, slot: u32, key: &str) -> bool {
        if !subs.keys.remove(key) {
            return false;
        }
        self.drop_key(key, slot);
        true
    }

    fn drop_key(&mut self, key: &str, slot: u32) {
        remove(&mut self.keys, &self.watch, Kind::Key, key, slot);
    }

    /// Subscribes `slot` to `topic`.
    pub(crate) fn subscribe(&mut self, subs: &mut Subs, slot: u32, topic: &str) -> Added {
        if subs.topics.contains(topic) {
            return Added::Already;
        }
        if !under(self.caps.topics, subs.topics.len()) {
            subs.log_cap(slot, "topics", self.caps.topics);
            return Added::Full;
        }
        subs.topics.insert(topic.into());
        add(&mut self.topics, &self.watch, Kind::Topic, topic, slot);
        Added::Yes
    }

    /// Unsubscribes `slot` from `topic`; false if it was not subscribed.
    pub(crate) fn unsubscribe(&mut self, subs: &mut Subs, slot: u32, topic: &str) -> bool {
        if !subs.topics.remove(topic) {
            return false;
        }
        self.drop_topic(topic, slot);
        true
    }

    fn drop_topic(&mut self, topic: &str, slot: u32) {
        remove(&mut self.topics, &self.watch, Kind::Topic, topic, slot);
    }

    /// Removes a closing connection from everything it was bound to.
    pub(crate) fn remove_all(&mut self, subs: Subs, slot: u32) {
        for k in &subs.keys {
            self.drop_key(k, slot);
        }
        for t in &subs.topics {
            self.drop_topic(t, slot);
        }
    }

    /// The connections bound to `key`, in no particular order.
    pub(crate) fn key(&self, key: &str) -> impl Iterator<Item = u32> + '_ {
        self.keys.get(key).into_iter().flatten().copied()
    }

    /// The subscribers of `topic`.
    pub(crate) fn topic(&self, topic: &str) -> Option<&HashSet<u32>> {
        self.topics.get(topic)
    }
}

impl Subs {
    fn log_cap(&mut self, slot: u32, what: &str, cap: usize) {
        if !self.logged_cap {
            self.logged_cap = true;
            tracing::info!(
                slot,
                cap,
                "a connection reached its cap of {what}; further ones are refused"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(it: impl Iterator<Item = u32>) -> Vec<u32> {
        let mut v: Vec<u32> = it.collect();
        v.sort_unstable();
        v
    }

    /// 200,000 connections of one key leave it, the last bound first (the order in which a
    /// `Vec` of slots had to be scanned to its end each time: 2e10 comparisons). With a set
    /// each leaves in O(1); the bound is generous for a loaded machine.
    #[test]
    fn many_connections_leave_one_key_in_linear_time() {
        let mut r = Registry::default();
        let n = 200_000u32;
        let mut subs: Vec<Subs> = (0..n).map(|_| Subs::default()).collect();
        for (slot, s) in subs.iter_mut().enumerate() {
            assert_eq!(r.bind(s, slot as u32, "everyone"), Added::Yes);
        }
        assert_eq!(r.key("everyone").count(), n as usize);
        let t = std::time::Instant::now();
        for slot in (0..n).rev() {
            let s = subs.pop().unwrap();
            r.remove_all(s, slot);
        }
        let took = t.elapsed();
        assert!(r.keys.is_empty());
        assert!(
            took < std::time::Duration::from_secs(2),
            "200,000 connections left one key in {took:?}"
        );
    }

    #[test]
    fn bind_subscribe_and_remove_all() {
        let mut r = Registry::default();
        let (mut a, mut b) = (Subs::default(), Subs::default());
        assert_eq!(r.bind(&mut a, 1, "alice"), Added::Yes);
        assert_eq!(r.bind(&mut a, 1, "alice"), Added::Already);
        assert_eq!(r.bind(&mut b, 2, "alice"), Added::Yes);
        assert_eq!(r.subscribe(&mut a, 1, "news"), Added::Yes);
        assert_eq!(r.subscribe(&mut b, 2, "news"), Added::Yes);
        assert_eq!(sorted(r.key("alice")), [1, 2]);
        assert_eq!(r.topic("news").map(|s| s.len()), Some(2));
        r.remove_all(a, 1);
        assert_eq!(sorted(r.key("alice")), [2]);
        assert_eq!(r.topic("news").map(|s| s.len()), Some(1));
        assert!(r.unsubscribe(&mut b, 2, "news"));
        assert!(!r.unsubscribe(&mut b, 2, "news"));
        assert!(r.topic("news").is_none());
        assert!(r.unbind(&mut b, 2, "alice"));
        assert!(!r.unbind(&mut b, 2, "alice"));
        assert_eq!(r.key("alice").count(), 0);
        assert!(r.keys.is_empty() && r.topics.is_empty());
    }

    #[test]
    fn caps_refuse_past_the_limit_and_free_up_on_removal() {
        let mut r = Registry::with_caps(Caps { keys: 2, topics: 3 });
        let mut s = Subs::default();
        assert_eq!(r.bind(&mut s, 1, "a"), Added::Yes);
        assert_eq!(r.bind(&mut s, 1, "b"), Added::Yes);
        assert_eq!(r.bind(&mut s, 1, "c"), Added::Full);
        // Already bound is still reported as such at the cap, not as full.
        assert_eq!(r.bind(&mut s, 1, "a"), Added::Already);
        assert_eq!(r.key("c").count(), 0);
        assert!(r.unbind(&mut s, 1, "a"));
        assert_eq!(r.bind(&mut s, 1, "c"), Added::Yes);
        for t in ["x", "y", "z"] {
            assert_eq!(r.subscribe(&mut s, 1, t), Added::Yes);
        }
        assert_eq!(r.subscribe(&mut s, 1, "w"), Added::Full);
        assert!(r.topic("w").is_none());
        // 0 is no limit.
        let mut r = Registry::default();
        let mut s = Subs::default();
        for i in 0..1000 {
            assert_eq!(r.subscribe(&mut s, 1, &i.to_string()), Added::Yes);
        }
    }

    /// One connection's N-th subscription costs a hash lookup, not a scan of its N-1 others.
    /// Sized so the old `Vec` scan (N²/2 = 1.25e9 name comparisons per table) takes tens of
    /// seconds while the hash path takes tens of milliseconds; the bound is generous for a
    /// loaded machine.
    #[test]
    fn many_subscriptions_on_one_connection_are_linear() {
        let names: Vec<String> = (0..50_000).map(|i| format!("topic-{i}")).collect();
        let mut r = Registry::default();
        let mut s = Subs::default();
        let t = std::time::Instant::now();
        for n in &names {
            assert_eq!(r.subscribe(&mut s, 1, n), Added::Yes);
            assert_eq!(r.bind(&mut s, 1, n), Added::Yes);
        }
        for n in &names {
            assert_eq!(r.subscribe(&mut s, 1, n), Added::Already);
        }
        r.remove_all(s, 1);
        assert!(r.keys.is_empty() && r.topics.is_empty());
        let took = t.elapsed();
        assert!(
            took < std::time::Duration::from_secs(3),
            "50,000 subscriptions and bindings on one connection took {took:?}"
        );
    }
}
