//! Channels: a ring each way and a doorbell each way, in one process or across two.
//!
//! The shared memory holds two rings back to back, each a control page and `data_size`
//! bytes: the guest-to-host ring first, then the host-to-guest ring, the order of a VMBus
//! guest's ring buffer (outbound, then inbound). The host creates the memfd and two
//! eventfds and sends them to the guest over a Unix socket with `SCM_RIGHTS`, after a
//! 16-byte header:
//!
//! ```text
//! | magic "BLRG" | version u32 | data_size u32 | reserved u32 (0) |   little-endian
//! ```
//!
//! with the descriptors in the order memfd, host doorbell (the guest signals it), guest
//! doorbell (the host signals it).

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use ballast_abi::vmbus::{FEAT_PENDING_SEND_SZ, RING_CONTROL_SIZE};
use ballast_backing::{BackingError, SharedRegion};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::{
    Doorbell, EventFdDoorbell, InProcessDoorbell, ReadPacket, Reader, RingBuffer, RingError, Writer,
};

/// Data area of each ring unless asked otherwise: 16 KiB, as Linux's `hv_balloon` asks
/// for (`dm_ring_size`).
pub const DEFAULT_DATA_SIZE: u32 = 16 * 1024;
/// Largest data area a channel accepts, so a setup header cannot make the guest map an
/// absurd region.
pub const MAX_DATA_SIZE: u32 = 64 << 20;

const PAGE: u32 = RING_CONTROL_SIZE as u32;
const SETUP_MAGIC: [u8; 4] = *b"BLRG";
const SETUP_VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const SETUP_FDS: usize = 3;

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The ring data size is not a non-zero multiple of 4096 up to [`MAX_DATA_SIZE`].
    #[error("ring data size {data_size} is not a non-zero multiple of 4096 up to {MAX_DATA_SIZE}")]
    DataSize {
        /// The size asked for or received.
        data_size: u32,
    },
    /// Creating or mapping the shared memory failed.
    #[error("shared memory: {0}")]
    Backing(#[from] BackingError),
    /// The rings in the shared memory are unusable.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// A syscall failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket closed before the whole header arrived.
    #[error("setup socket closed after {received} of {HEADER_LEN} header bytes")]
    Closed {
        /// Header bytes received.
        received: usize,
    },
    /// The header does not start with the magic.
    #[error("setup header magic {found:02x?} is not a ballast ring setup")]
    Magic {
        /// The first four bytes received.
        found: [u8; 4],
    },
    /// A header version this code does not speak.
    #[error("setup header version {found}, expected {SETUP_VERSION}")]
    Version {
        /// The version received.
        found: u32,
    },
    /// The reserved header field is not zero.
    #[error("setup header reserved field is {found:#x}, not zero")]
    Reserved {
        /// The value received.
        found: u32,
    },
    /// The wrong number of descriptors came with the header.
    #[error("setup carried {found} file descriptors, expected {SETUP_FDS}")]
    FdCount {
        /// Descriptors received.
        found: usize,
    },
    /// The kernel dropped descriptors that did not fit the receive buffer.
    #[error("setup descriptors truncated: more than {SETUP_FDS} were sent")]
    FdsTruncated,
}

fn io_err(op: &'static str) -> impl FnOnce(Errno) -> SetupError {
    move |e| SetupError::Io {
        op,
        source: e.into(),
    }
}

fn retry<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

fn check_data_size(data_size: u32) -> Result<(), SetupError> {
    if data_size == 0 || data_size % PAGE != 0 || data_size > MAX_DATA_SIZE {
        return Err(SetupError::DataSize { data_size });
    }
    Ok(())
}

/// Offsets of the two control pages and the region length, for a checked data size.
fn layout(data_size: u32) -> (usize, usize, usize) {
    let ring = RING_CONTROL_SIZE + data_size as usize;
    (0, ring, 2 * ring)
}

/// The guest-to-host and host-to-guest rings of a region.
fn rings(
    region: &Arc<SharedRegion>,
    data_size: u32,
) -> Result<(RingBuffer, RingBuffer), RingError> {
    let (to_host, to_guest, _) = layout(data_size);
    Ok((
        RingBuffer::new(Arc::clone(region), to_host, data_size)?,
        RingBuffer::new(Arc::clone(region), to_guest, data_size)?,
    ))
}

/// A fresh region with both rings initialised as Linux's `hv_ringbuffer_init` does.
fn new_region(data_size: u32) -> Result<(Arc<SharedRegion>, RingBuffer, RingBuffer), SetupError> {
    check_data_size(data_size)?;
    let region = Arc::new(SharedRegion::new("ballast-dm-ring", layout(data_size).2)?);
    let (to_host, to_guest) = rings(&region, data_size)?;
    to_host.init(FEAT_PENDING_SEND_SZ)?;
    to_guest.init(FEAT_PENDING_SEND_SZ)?;
    Ok((region, to_host, to_guest))
}

/// One end of a channel: it writes one ring, reads the other, signals the peer's doorbell
/// and waits on its own.
#[derive(Debug)]
pub struct Channel {
    writer: Writer,
    reader: Reader,
    peer: Arc<dyn Doorbell>,
    own: Arc<dyn Doorbell>,
}

impl Channel {
    /// An end from its parts: `peer` is the doorbell the other end waits on, `own` the
    /// one this end waits on.
    pub fn new(
        writer: Writer,
        reader: Reader,
        peer: Arc<dyn Doorbell>,
        own: Arc<dyn Doorbell>,
    ) -> Self {
        Self {
            writer,
            reader,
            peer,
            own,
        }
    }

    /// Both ends of a channel in this process (host end, guest end), over one shared
    /// region with rings of `data_size` bytes (a multiple of 4096, e.g.
    /// [`DEFAULT_DATA_SIZE`]) and in-process doorbells.
    pub fn pair_in_process(data_size: u32) -> Result<(Channel, Channel), SetupError> {
        let (_, to_host, to_guest) = new_region(data_size)?;
        let host_bell: Arc<dyn Doorbell> = Arc::new(InProcessDoorbell::new());
        let guest_bell: Arc<dyn Doorbell> = Arc::new(InProcessDoorbell::new());
        let host = Channel::new(
            Writer::new(to_guest.clone())?,
            Reader::new(to_host.clone())?,
            Arc::clone(&guest_bell),
            Arc::clone(&host_bell),
        );
        let guest = Channel::new(
            Writer::new(to_host)?,
            Reader::new(to_guest)?,
            host_bell,
            guest_bell,
        );
        Ok((host, guest))
    }

    /// Sends an in-band packet, signalling the peer if it needs it. On
    /// [`RingError::Full`] nothing was sent: wait on [`doorbell`](Self::doorbell) and try
    /// the same packet again.
    pub fn try_send(&mut self, payload: &[u8], trans_id: u64) -> Result<(), RingError> {
        if self.writer.try_write(payload, trans_id)?.is_needed() {
            self.peer.signal();
        }
        Ok(())
    }

    /// Receives the next packet into `buf`, signalling the peer if it was waiting for the
    /// space. `None` when nothing is queued: wait on [`doorbell`](Self::doorbell).
    pub fn try_recv<'a>(
        &mut self,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<ReadPacket<'a>>, RingError> {
        match self.reader.try_read(buf)? {
            None => Ok(None),
            Some((packet, signal)) => {
                if signal.is_needed() {
                    self.peer.signal();
                }
                Ok(Some(packet))
            }
        }
    }

    /// The doorbell this end waits on: the peer rings it when a packet arrives in an empty
    /// ring or when space it was waiting for is free.
    pub fn doorbell(&self) -> &dyn Doorbell {
        &*self.own
    }

    /// Waits on [`doorbell`](Self::doorbell) for at most `timeout` (`None`: for ever);
    /// `true` if it rang.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.own.wait_timeout(timeout)
    }

    /// The outgoing ring's end.
    pub fn writer(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// The incoming ring's end, e.g. to mask interrupts while draining.
    pub fn reader(&mut self) -> &mut Reader {
        &mut self.reader
    }
}

/// The guest's half of a channel the host created: the shared memory and both doorbells,
/// to be sent over a Unix socket ([`send`](Self::send)) and turned into the guest's
/// [`Channel`] on the other side ([`receive`](Self::receive)).
#[derive(Debug)]
pub struct ChannelSetup {
    region: Arc<SharedRegion>,
    data_size: u32,
    host_bell: Arc<EventFdDoorbell>,
    guest_bell: Arc<EventFdDoorbell>,
}

impl ChannelSetup {
    /// Creates the shared memory (both rings initialised, `data_size` bytes each, a
    /// multiple of 4096 such as [`DEFAULT_DATA_SIZE`]) and two eventfds. Returns the host's
    /// end, usable at once, and the guest's half to send.
    pub fn create(data_size: u32) -> Result<(Channel, ChannelSetup), SetupError> {
        let (region, to_host, to_guest) = new_region(data_size)?;
        let host_bell = Arc::new(EventFdDoorbell::new().map_err(|source| SetupError::Io {
            op: "eventfd",
            source,
        })?);
        let guest_bell = Arc::new(EventFdDoorbell::new().map_err(|source| SetupError::Io {
            op: "eventfd",
            source,
        })?);
        let host = Channel::new(
            Writer::new(to_guest)?,
            Reader::new(to_host)?,
            Arc::clone(&guest_bell) as Arc<dyn Doorbell>,
            Arc::clone(&host_bell) as Arc<dyn Doorbell>,
        );
        Ok((
            host,
            ChannelSetup {
                region,
                data_size,
                host_bell,
                guest_bell,
            },
        ))
    }

    /// The data area size of each ring.
    pub fn data_size(&self) -> u32 {
        self.data_size
    }

    /// Sends the header and the three descriptors to the guest.
    pub fn send(&self, socket: &UnixStream) -> Result<(), SetupError> {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&SETUP_MAGIC);
        header[4..8].copy_from_slice(&SETUP_VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&self.data_size.to_le_bytes());
        let fds: [BorrowedFd<'_>; SETUP_FDS] =
            [self.region.fd(), self.host_bell.fd(), self.guest_bell.fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SETUP_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io_err("sendmsg (SCM_RIGHTS)")(Errno::NOBUFS));
        }
        let sent = retry(|| {
            rustix::net::sendmsg(
                socket,
                &[IoSlice::new(&header)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
        })
        .map_err(io_err("sendmsg (SCM_RIGHTS)"))?;
        // The descriptors travelled with the first byte; a short send leaves only bytes.
        let mut rest = header.get(sent..).unwrap_or_default();
        while !rest.is_empty() {
            let n = retry(|| rustix::net::send(socket, rest, SendFlags::NOSIGNAL))
                .map_err(io_err("send"))?;
            rest = rest.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    /// Receives a setup from the host and maps it: the guest's end of the channel.
    ///
    /// Everything received is checked before use: the header, the descriptor count, the
    /// memfd's size and seals (see [`SharedRegion::from_fd`]) and the ring indices.
    pub fn receive(socket: &UnixStream) -> Result<Channel, SetupError> {
        let mut header = [0u8; HEADER_LEN];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SETUP_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = retry(|| {
            rustix::net::recvmsg(
                socket,
                &mut [IoSliceMut::new(&mut header)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
        })
        .map_err(io_err("recvmsg (SCM_RIGHTS)"))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(SetupError::FdsTruncated);
        }
        let mut received = msg.bytes.min(HEADER_LEN);
        if received == 0 {
            return Err(SetupError::Closed { received });
        }
        let mut reader = socket;
        while received < HEADER_LEN {
            let rest = header.get_mut(received..).unwrap_or_default();
            match reader.read(rest) {
                Ok(0) => return Err(SetupError::Closed { received }),
                Ok(n) => received += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(SetupError::Io { op: "recv", source }),
            }
        }

        let word = |at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(header.get(at..at + 4).unwrap_or(&[0; 4]));
            w
        };
        if word(0) != SETUP_MAGIC {
            return Err(SetupError::Magic { found: word(0) });
        }
        let version = u32::from_le_bytes(word(4));
        if version != SETUP_VERSION {
            return Err(SetupError::Version { found: version });
        }
        let data_size = u32::from_le_bytes(word(8));
        check_data_size(data_size)?;
        let reserved = u32::from_le_bytes(word(12));
        if reserved != 0 {
            return Err(SetupError::Reserved { found: reserved });
        }
        let [memfd, host_fd, guest_fd]: [OwnedFd; SETUP_FDS] = fds
            .try_into()
            .map_err(|fds: Vec<OwnedFd>| SetupError::FdCount { found: fds.len() })?;

        let region = Arc::new(SharedRegion::from_fd(memfd, layout(data_size).2)?);
        let (to_host, to_guest) = rings(&region, data_size)?;
        let host_bell = EventFdDoorbell::from_fd(host_fd).map_err(|source| SetupError::Io {
            op: "fcntl (host doorbell)",
            source,
        })?;
        let guest_bell = EventFdDoorbell::from_fd(guest_fd).map_err(|source| SetupError::Io {
            op: "fcntl (guest doorbell)",
            source,
        })?;
        Ok(Channel::new(
            Writer::new(to_host)?,
            Reader::new(to_guest)?,
            Arc::new(host_bell),
            Arc::new(guest_bell),
        ))
    }
}

#[cfg(test)]
mod tests;
