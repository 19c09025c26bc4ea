//! A worker's part of the key and topic tables: names to the slab keys of its connections.
//!
//! Each connection remembers what it is bound to (in `Conn::subs`, allocated only once it
//! binds or subscribes), so closing it removes it from every table in O(its bindings).

use std::collections::{HashMap, HashSet};

/// Key and topic membership on one worker.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    keys: HashMap<Box<str>, Vec<u32>>,
    topics: HashMap<Box<str>, HashSet<u32>>,
}

/// What one connection is bound to.
#[derive(Debug, Default)]
pub(crate) struct Subs {
    pub(crate) keys: Vec<Box<str>>,
    pub(crate) topics: Vec<Box<str>>,
}

impl Registry {
    /// Binds `slot` to `key`; false if it already was.
    pub(crate) fn bind(&mut self, subs: &mut Subs, slot: u32, key: &str) -> bool {
        if subs.keys.iter().any(|k| &**k == key) {
            return false;
        }
        subs.keys.push(key.into());
        self.keys.entry(key.into()).or_default().push(slot);
        true
    }

    /// Unbinds `slot` from `key`; false if it was not bound.
    pub(crate) fn unbind(&mut self, subs: &mut Subs, slot: u32, key: &str) -> bool {
        let Some(i) = subs.keys.iter().position(|k| &**k == key) else {
            return false;
        };
        subs.keys.swap_remove(i);
        self.drop_key(key, slot);
        true
    }

    fn drop_key(&mut self, key: &str, slot: u32) {
        if let Some(v) = self.keys.get_mut(key) {
            if let Some(j) = v.iter().position(|&s| s == slot) {
                v.swap_remove(j);
            }
            if v.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Subscribes `slot` to `topic`; false if it already was.
    pub(crate) fn subscribe(&mut self, subs: &mut Subs, slot: u32, topic: &str) -> bool {
        if subs.topics.iter().any(|t| &**t == topic) {
            return false;
        }
        subs.topics.push(topic.into());
        self.topics.entry(topic.into()).or_default().insert(slot);
        true
    }

    /// Unsubscribes `slot` from `topic`; false if it was not subscribed.
    pub(crate) fn unsubscribe(&mut self, subs: &mut Subs, slot: u32, topic: &str) -> bool {
        let Some(i) = subs.topics.iter().position(|t| &**t == topic) else {
            return false;
        };
        subs.topics.swap_remove(i);
        self.drop_topic(topic, slot);
        true
    }

    fn drop_topic(&mut self, topic: &str, slot: u32) {
        if let Some(set) = self.topics.get_mut(topic) {
            set.remove(&slot);
            if set.is_empty() {
                self.topics.remove(topic);
            }
        }
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

    /// The connections bound to `key`.
    pub(crate) fn key(&self, key: &str) -> &[u32] {
        self.keys.get(key).map_or(&[], |v| v.as_slice())
    }

    /// The subscribers of `topic`.
    pub(crate) fn topic(&self, topic: &str) -> Option<&HashSet<u32>> {
        self.topics.get(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_subscribe_and_remove_all() {
        let mut r = Registry::default();
        let (mut a, mut b) = (Subs::default(), Subs::default());
        assert!(r.bind(&mut a, 1, "alice"));
        assert!(!r.bind(&mut a, 1, "alice"));
        assert!(r.bind(&mut b, 2, "alice"));
        assert!(r.subscribe(&mut a, 1, "news"));
        assert!(r.subscribe(&mut b, 2, "news"));
        assert_eq!(r.key("alice"), &[1, 2]);
        assert_eq!(r.topic("news").map(|s| s.len()), Some(2));
        r.remove_all(a, 1);
        assert_eq!(r.key("alice"), &[2]);
        assert_eq!(r.topic("news").map(|s| s.len()), Some(1));
        assert!(r.unsubscribe(&mut b, 2, "news"));
        assert!(r.topic("news").is_none());
        assert!(r.unbind(&mut b, 2, "alice"));
        assert!(r.key("alice").is_empty());
        assert!(r.keys.is_empty() && r.topics.is_empty());
    }
}
