//! The shared vocabulary, one layer above [`crate::proto`]: what a message is ([`Message`]),
//! which connection ([`ConnId`]), who receives a publish ([`Target`]), and a binding cap
//! reached ([`LimitReached`]). Every other layer speaks in these terms; this file imports
//! only `proto` and std. Re-exported at the crate root and at their former paths
//! (`volley::handler::Message`, `volley::runtime::ConnId`, `volley::broadcast::Target`).

use std::fmt;

/// A data message, received from a client or sent to one. Control frames are the engine's.
///
/// The one message type of the embedding API. [`crate::proto::Decoded`] is the sans-IO
/// decoder's output for those who drive the protocol core themselves (a client, a
/// load generator): the same `Text` and `Binary`, plus the control frames; convert with
/// `From` and `TryFrom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8, checked).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

impl<'a> From<Message<'a>> for crate::proto::Decoded<'a> {
    fn from(m: Message<'a>) -> Self {
        match m {
            Message::Text(t) => crate::proto::Decoded::Text(t),
            Message::Binary(b) => crate::proto::Decoded::Binary(b),
        }
    }
}

impl<'a> TryFrom<crate::proto::Decoded<'a>> for Message<'a> {
    /// A control frame (ping, pong, close) is not a data message: given back.
    type Error = crate::proto::Decoded<'a>;

    fn try_from(m: crate::proto::Decoded<'a>) -> Result<Self, Self::Error> {
        match m {
            crate::proto::Decoded::Text(t) => Ok(Message::Text(t)),
            crate::proto::Decoded::Binary(b) => Ok(Message::Binary(b)),
            control => Err(control),
        }
    }
}

/// Identifies a connection across the server (and, in a cluster, across nodes): node,
/// worker, slab slot and generation.
///
/// A slot is reused after its connection closes, but with a new generation, so an id kept
/// after its connection closed never reaches the connection that reuses the slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// Generations are 24 bits: the top byte of the id holds the node.
pub(crate) const GEN_MASK: u32 = 0xFF_FFFF;

impl ConnId {
    #[cfg(test)]
    pub(crate) fn new(worker: u8, key: usize, gen: u32) -> ConnId {
        ConnId::with_node(0, worker, key, gen)
    }

    pub(crate) fn with_node(node: u8, worker: u8, key: usize, gen: u32) -> ConnId {
        debug_assert!(key < (1 << 24));
        ConnId(
            (node as u64) << 56
                | (worker as u64) << 48
                | (key as u64 & 0xFF_FFFF) << 24
                | (gen & GEN_MASK) as u64,
        )
    }

    pub(crate) fn from_u64(v: u64) -> ConnId {
        ConnId(v)
    }

    /// The cluster node that holds the connection (0 outside a cluster).
    pub fn node(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The worker that owns the connection.
    pub fn worker(self) -> usize {
        ((self.0 >> 48) & 0xFF) as usize
    }

    pub(crate) fn key(self) -> usize {
        ((self.0 >> 24) & 0xFF_FFFF) as usize
    }

    pub(crate) fn gen(self) -> u32 {
        self.0 as u32 & GEN_MASK
    }

    /// The id as a number (stable for the connection's life).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node() != 0 {
            write!(f, "n{}:", self.node())?;
        }
        write!(f, "w{}:{}#{}", self.worker(), self.key(), self.gen())
    }
}

/// Who receives an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// One connection.
    Conn(ConnId),
    /// Several connections (each receives the event once, even if listed twice).
    Conns(&'a [ConnId]),
    /// Every connection bound to an application key.
    Key(&'a str),
    /// Every connection bound to any of these keys, each once.
    Keys(&'a [&'a str]),
    /// Every current subscriber of a topic.
    Topic(&'a str),
    /// Every open connection.
    All,
}

/// A bind or subscribe refused because the connection already holds as many keys (or
/// topics) as `Config::max_keys_per_conn` (or `max_topics_per_conn`) allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitReached {
    /// The cap that was reached.
    pub limit: usize,
}

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at most {} per connection", self.limit)
    }
}

impl std::error::Error for LimitReached {}
