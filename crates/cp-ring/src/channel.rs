//! An in-process ring transport over channels, one endpoint per rank thread.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use crate::RingTransport;

/// Why an exchange failed on one rank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer ended (returned, failed or panicked) without sending what this rank waits for.
    #[error("rank {rank}: peer rank {peer} is gone (ended without sending its {op} message)")]
    PeerGone {
        /// The rank.
        rank: usize,
        /// The peer rank.
        peer: usize,
        /// The operation.
        op: &'static str,
    },
    /// The peer did not answer within the timeout.
    #[error("rank {rank}: no {op} message from peer rank {peer} within {waited:?}")]
    Timeout {
        /// The rank.
        rank: usize,
        /// The peer rank.
        peer: usize,
        /// The operation.
        op: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// `finish_shift` without a `start_shift`, or an all-to-all with the wrong number of messages.
    #[error("rank {rank}: {op} misused: {reason}")]
    Misuse {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Shift,
    AllToAll,
}

impl Kind {
    fn op(self) -> &'static str {
        match self {
            Kind::Shift => "ring shift",
            Kind::AllToAll => "all-to-all",
        }
    }
}

enum Payload<T> {
    Data {
        /// The kind.
        kind: Kind,
        /// The round.
        round: u64,
        /// The parts.
        parts: Vec<T>,
    },
    Goodbye,
}

struct Envelope<T> {
    src: usize,
    payload: Payload<T>,
}

/// One rank's end of an in-process ring.
///
/// Messages from one sender arrive in the order sent, and every rank performs its exchanges in
/// program order, so a message is identified by its sender, its kind and a per-kind round
/// counter; messages that arrive before they are wanted wait in a local queue.
pub struct ChannelTransport<T> {
    rank: usize,
    world_size: usize,
    peers: Vec<Sender<Envelope<T>>>,
    inbox: Receiver<Envelope<T>>,
    early: Vec<Envelope<T>>,
    shift_round: u64,
    all_to_all_round: u64,
    shift_in_flight: bool,
    timeout: Duration,
}

impl<T> std::fmt::Debug for ChannelTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTransport")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds the endpoints of a ring of `world_size` ranks; a receive waits at most `timeout`.
pub fn channel_ring<T>(world_size: usize, timeout: Duration) -> Vec<ChannelTransport<T>> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..world_size).map(|_| channel()).unzip();
    receivers
        .into_iter()
        .enumerate()
        .map(|(rank, inbox)| ChannelTransport {
            rank,
            world_size,
            peers: senders.clone(),
            inbox,
            early: Vec::new(),
            shift_round: 0,
            all_to_all_round: 0,
            shift_in_flight: false,
            timeout,
        })
        .collect()
}

impl<T> ChannelTransport<T> {
    fn send(&mut self, dst: usize, kind: Kind, round: u64, parts: Vec<T>) -> Result<(), TransportError> {
        let envelope = Envelope { src: self.rank, payload: Payload::Data { kind, round, parts } };
        if dst == self.rank {
            self.early.push(envelope);
            return Ok(());
        }
        self.peers[dst].send(envelope).map_err(|_| TransportError::PeerGone {
            rank: self.rank,
            peer: dst,
            op: kind.op(),
        })
    }

    fn take_early(&mut self, src: usize, kind: Kind, round: u64) -> Option<Result<Vec<T>, TransportError>> {
        let at = self.early.iter().position(|e| {
            e.src == src
                && match &e.payload {
                    Payload::Data { kind: k, round: r, .. } => *k == kind && *r == round,
                    Payload::Goodbye => true,
                }
        })?;
        Some(match self.early.remove(at).payload {
            Payload::Data { parts, .. } => Ok(parts),
            Payload::Goodbye => Err(TransportError::PeerGone { rank: self.rank, peer: src, op: kind.op() }),
        })
    }

    fn receive(&mut self, src: usize, kind: Kind, round: u64) -> Result<Vec<T>, TransportError> {
        let started = Instant::now();
        loop {
            if let Some(found) = self.take_early(src, kind, round) {
                return found;
            }
            let left = self.timeout.saturating_sub(started.elapsed());
            match self.inbox.recv_timeout(left) {
                Ok(envelope) => self.early.push(envelope),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(TransportError::Timeout {
                        rank: self.rank,
                        peer: src,
                        op: kind.op(),
                        waited: started.elapsed(),
                    });
                }
                // Unreachable while this endpoint holds a sender to itself; kept for safety.
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(TransportError::PeerGone { rank: self.rank, peer: src, op: kind.op() });
                }
            }
        }
    }
}

impl<T: Clone + Send> RingTransport<T> for ChannelTransport<T> {
    type Error = TransportError;

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn start_shift(&mut self, msg: &[T]) -> Result<(), TransportError> {
        if self.shift_in_flight {
            return Err(TransportError::Misuse {
                rank: self.rank,
                op: "start_shift",
                reason: "the previous shift was not finished".into(),
            });
        }
        let next = (self.rank + 1) % self.world_size;
        self.send(next, Kind::Shift, self.shift_round, msg.to_vec())?;
        self.shift_in_flight = true;
        Ok(())
    }

    fn finish_shift(&mut self) -> Result<Vec<T>, TransportError> {
        if !self.shift_in_flight {
            return Err(TransportError::Misuse {
                rank: self.rank,
                op: "finish_shift",
                reason: "no shift was started".into(),
            });
        }
        let prev = (self.rank + self.world_size - 1) % self.world_size;
        let parts = self.receive(prev, Kind::Shift, self.shift_round)?;
        self.shift_round += 1;
        self.shift_in_flight = false;
        Ok(parts)
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<T>>) -> Result<Vec<Vec<T>>, TransportError> {
        if msgs.len() != self.world_size {
            return Err(TransportError::Misuse {
                rank: self.rank,
                op: "all_to_all",
                reason: format!("{} messages for {} ranks", msgs.len(), self.world_size),
            });
        }
        let round = self.all_to_all_round;
        for (dst, parts) in msgs.into_iter().enumerate() {
            self.send(dst, Kind::AllToAll, round, parts)?;
        }
        let received = (0..self.world_size).map(|src| self.receive(src, Kind::AllToAll, round)).collect();
        self.all_to_all_round += 1;
        received
    }

    /// Completes a shift started and not finished (a step that failed between the two), its
    /// message discarded, so that the next shift pairs with the peers' next one. Sends complete
    /// when they return: nothing else is in flight.
    fn drain(&mut self) -> Result<(), TransportError> {
        if self.shift_in_flight {
            self.finish_shift()?;
        }
        Ok(())
    }
}

impl<T> Drop for ChannelTransport<T> {
    fn drop(&mut self) {
        // Tell every peer this rank is done, so one still waiting on it fails now rather than
        // at its timeout. A peer already gone cannot be told; that is fine.
        for (dst, peer) in self.peers.iter().enumerate() {
            if dst != self.rank {
                let _ = peer.send(Envelope { src: self.rank, payload: Payload::Goodbye });
            }
        }
    }
}
