//! The two queues each endpoint keeps: messages to send and events for its owner.
//!
//! Both are ballast's own design, not the protocol's:
//!
//! - [`TxQueue`] holds messages encoded into one growing byte buffer, each behind its
//!   length, and hands them out by copying into the caller's buffer. Once the buffer has
//!   grown to a connection's working size nothing is allocated per message, on either
//!   side of `poll_transmit`.
//! - [`EventQueue`] is bounded: up to [`EVENT_CAP`] events it queues everything; beyond
//!   that, events a peer can cause at will and that carry no accounting (a protocol
//!   violation, a status report) are counted in one coalesced event instead of queued,
//!   while events that carry accounting (pages returned, a balloon's completion, a
//!   reset) are always queued. Those are bounded by the owner's own requests (one
//!   transaction at a time, each over a bounded number of pages), so the queue stays
//!   bounded and the owner never loses a page's worth of accounting by not draining.

use std::collections::VecDeque;

use ballast_abi::dm::{EncodeError, MAX_MESSAGE_SIZE, Message};

use crate::vsc::VscEvent;
use crate::vsp::VspEvent;

/// Events an endpoint ([`Vsp`](crate::vsp::Vsp), [`Vsc`](crate::vsc::Vsc)) queues before
/// it coalesces the peer's noise: beyond this many undrained events, protocol violations
/// (and the VSP's status reports) are counted in one `Coalesced` event, while events that
/// carry accounting are always queued, so an owner that drains late loses no page.
pub const EVENT_CAP: usize = 1024;

/// Bytes of the length in front of each queued message.
const LEN_BYTES: usize = 2;
const _: () = assert!(MAX_MESSAGE_SIZE <= u16::MAX as usize);

/// Encoded messages waiting to be sent, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct TxQueue {
    /// Records from `head` on: a little-endian u16 length, then that many bytes.
    bytes: Vec<u8>,
    head: usize,
    count: usize,
}

impl TxQueue {
    /// Encodes `msg` at the back; nothing is queued if it cannot be encoded.
    pub(crate) fn push(&mut self, msg: &Message<'_>) -> Result<(), EncodeError> {
        self.compact();
        let at = self.bytes.len();
        // Room for exactly this message (`write` refuses one over MAX_MESSAGE_SIZE).
        let room = msg.encoded_len().min(MAX_MESSAGE_SIZE);
        self.bytes.resize(at + LEN_BYTES + room, 0);
        match msg.write(&mut self.bytes[at + LEN_BYTES..]) {
            Ok(n) => {
                // n <= MAX_MESSAGE_SIZE <= u16::MAX, asserted above.
                self.bytes[at..at + LEN_BYTES].copy_from_slice(&(n as u16).to_le_bytes());
                self.bytes.truncate(at + LEN_BYTES + n);
                self.count += 1;
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(at);
                Err(e)
            }
        }
    }

    /// The oldest message, still queued.
    pub(crate) fn front(&self) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([
            self.bytes[self.head],
            self.bytes[self.head + 1],
        ]));
        let start = self.head + LEN_BYTES;
        Some(&self.bytes[start..start + len])
    }

    /// Copies the oldest message into `buf` and drops it; returns its length.
    pub(crate) fn pop(&mut self, buf: &mut [u8; MAX_MESSAGE_SIZE]) -> Option<usize> {
        let len = self.front()?.len();
        let start = self.head + LEN_BYTES;
        buf[..len].copy_from_slice(&self.bytes[start..start + len]);
        self.head = start + len;
        self.count -= 1;
        if self.count == 0 {
            // Keeps the capacity for the next messages.
            self.bytes.clear();
            self.head = 0;
        }
        Some(len)
    }

    /// Messages queued.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Drops every message.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.head = 0;
        self.count = 0;
    }

    /// Moves the live records to the front once the sent ones are at least half the
    /// buffer, so a queue that never empties does not grow: amortised O(1) per byte.
    fn compact(&mut self) {
        if self.head > 0 && self.head * 2 >= self.bytes.len() {
            self.bytes.copy_within(self.head.., 0);
            self.bytes.truncate(self.bytes.len() - self.head);
            self.head = 0;
        }
    }
}

/// An event type whose peer-caused noise an [`EventQueue`] may coalesce.
pub(crate) trait Coalesce: Sized {
    /// If `self` is a coalesced-count event and `next` is noise it counts, counts it.
    fn absorb(&mut self, next: &Self) -> bool;
    /// A coalesced-count event counting `next`, if `next` is noise; `None` for an event
    /// that must be queued whatever the length.
    fn counted(next: &Self) -> Option<Self>;
}

/// Events for the owner, oldest first, bounded as the [module documentation](self) says.
#[derive(Debug, Clone)]
pub(crate) struct EventQueue<E> {
    events: VecDeque<E>,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            events: VecDeque::new(),
        }
    }
}

impl<E: Coalesce> EventQueue<E> {
    /// Queues `event`, or counts it once [`EVENT_CAP`] events wait and it is noise.
    pub(crate) fn push_back(&mut self, event: E) {
        if self.events.len() < EVENT_CAP {
            self.events.push_back(event);
            return;
        }
        if self
            .events
            .back_mut()
            .is_some_and(|last| last.absorb(&event))
        {
            return;
        }
        // Beyond the cap, a run of noise costs one entry; accounting events are kept.
        self.events.push_back(E::counted(&event).unwrap_or(event));
    }

    /// The oldest event.
    pub(crate) fn pop_front(&mut self) -> Option<E> {
        self.events.pop_front()
    }

    /// Events queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

impl Coalesce for VspEvent {
    fn absorb(&mut self, next: &Self) -> bool {
        match (self, next) {
            (VspEvent::Coalesced { violations, .. }, VspEvent::ProtocolViolation { .. }) => {
                *violations += 1;
                true
            }
            (VspEvent::Coalesced { status_reports, .. }, VspEvent::StatusReport { .. }) => {
                *status_reports += 1;
                true
            }
            _ => false,
        }
    }

    fn counted(next: &Self) -> Option<Self> {
        match next {
            VspEvent::ProtocolViolation { .. } => Some(VspEvent::Coalesced {
                violations: 1,
                status_reports: 0,
            }),
            VspEvent::StatusReport { .. } => Some(VspEvent::Coalesced {
                violations: 0,
                status_reports: 1,
            }),
            _ => None,
        }
    }
}

impl Coalesce for VscEvent {
    fn absorb(&mut self, next: &Self) -> bool {
        match (self, next) {
            (VscEvent::Coalesced { violations }, VscEvent::ProtocolViolation(_)) => {
                *violations += 1;
                true
            }
            _ => false,
        }
    }

    fn counted(next: &Self) -> Option<Self> {
        matches!(next, VscEvent::ProtocolViolation(_))
            .then_some(VscEvent::Coalesced { violations: 1 })
    }
}

#[cfg(test)]
mod tests {
    use ballast_abi::dm::{Body, Message, Version};

    use super::*;

    fn msg(trans_id: u32) -> Message<'static> {
        Message::new(
            trans_id,
            Body::VersionRequest {
                version: Version::V2_0,
                is_last_attempt: false,
            },
        )
    }

    #[test]
    fn tx_queue_hands_out_messages_in_order_and_reuses_its_buffer() {
        let mut q = TxQueue::default();
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        for round in 0..3u32 {
            for i in 0..10 {
                q.push(&msg(round * 100 + i)).unwrap();
            }
            // Half out, then more in: compaction keeps the order.
            for i in 0..5 {
                let n = q.pop(&mut buf).unwrap();
                assert_eq!(&buf[..n], &msg(round * 100 + i).to_bytes().unwrap()[..]);
            }
            for i in 10..20 {
                q.push(&msg(round * 100 + i)).unwrap();
            }
            assert_eq!(q.len(), 15);
            for i in 5..20 {
                assert_eq!(
                    q.front().unwrap(),
                    &msg(round * 100 + i).to_bytes().unwrap()[..]
                );
                let n = q.pop(&mut buf).unwrap();
                assert_eq!(&buf[..n], &msg(round * 100 + i).to_bytes().unwrap()[..]);
            }
            assert_eq!(q.pop(&mut buf), None);
        }
        let cap = q.bytes.capacity();
        q.push(&msg(1)).unwrap();
        q.pop(&mut buf).unwrap();
        assert_eq!(q.bytes.capacity(), cap);
        q.push(&msg(1)).unwrap();
        q.clear();
        assert_eq!((q.len(), q.front()), (0, None));
    }

    #[derive(Debug, Clone, PartialEq)]
    enum E {
        Noise,
        Counted(u64),
        Accounting(u32),
    }

    impl Coalesce for E {
        fn absorb(&mut self, next: &Self) -> bool {
            match (self, next) {
                (E::Counted(n), E::Noise) => {
                    *n += 1;
                    true
                }
                _ => false,
            }
        }
        fn counted(next: &Self) -> Option<Self> {
            matches!(next, E::Noise).then_some(E::Counted(1))
        }
    }

    #[test]
    fn event_queue_coalesces_noise_beyond_the_cap_and_keeps_accounting() {
        let mut q = EventQueue::default();
        for _ in 0..EVENT_CAP {
            q.push_back(E::Noise);
        }
        for i in 0..100_000u32 {
            q.push_back(E::Noise);
            if i % 10_000 == 0 {
                q.push_back(E::Accounting(i));
            }
        }
        assert!(q.len() <= EVENT_CAP + 2 * 10 + 1, "{}", q.len());
        let events: Vec<E> = std::iter::from_fn(|| q.pop_front()).collect();
        let noise: u64 = events
            .iter()
            .map(|e| match e {
                E::Noise => 1,
                E::Counted(n) => *n,
                E::Accounting(_) => 0,
            })
            .sum();
        assert_eq!(noise, EVENT_CAP as u64 + 100_000);
        let kept: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                E::Accounting(i) => Some(*i),
                _ => None,
            })
            .collect();
        assert_eq!(kept, (0..10).map(|i| i * 10_000).collect::<Vec<_>>());
    }
}
