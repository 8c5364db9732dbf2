//! Moving UDP datagrams in batches: on Linux one `recvmmsg(2)` reads every query waiting on
//! a socket (up to [`BATCH`]) and one `sendmmsg(2)` writes all their answers, so a busy
//! worker makes two system calls per batch instead of two per query (the kernel was 43% of
//! the zone-answer path, most of it entering and leaving system calls). Elsewhere the same
//! types move one datagram per call.
//!
//! Owns only buffers and system calls; what a datagram means is the handler's business.

use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;
use tracing::debug;

/// Datagrams one receive (and one send) call moves at most. Small on purpose: the answers
/// of a batch go out together, so the first query of a full batch waits while the others
/// are answered; ten keeps 90% of the saved system calls (measured: the same answers per
/// core as 32, loadtest/RESULTS.md).
pub const BATCH: usize = 10;

/// Room for one query. A DNS query over UDP is a few hundred bytes; a longer datagram is
/// not a query this server answers (it is dropped and counted as malformed, `oversize`).
pub const SLOT: usize = 4096;

/// One datagram received.
pub struct Datagram<'a> {
    /// Its bytes (at most [`SLOT`]).
    pub bytes: &'a [u8],
    /// Who sent it.
    pub peer: SocketAddr,
    /// It was longer than [`SLOT`] and `bytes` holds only its start.
    pub oversize: bool,
}

/// Receive buffers for one worker's socket.
pub struct Inbox {
    slots: Vec<[u8; SLOT]>,
    received: Vec<Received>,
}

/// What the kernel said about one slot.
#[derive(Clone, Copy)]
struct Received {
    len: usize,
    peer: Option<SocketAddr>,
    oversize: bool,
}

impl Default for Inbox {
    /// Empty buffers for [`BATCH`] datagrams.
    fn default() -> Inbox {
        Inbox {
            slots: vec![[0u8; SLOT]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Inbox {
    /// Waits for at least one datagram and reads every one waiting (up to [`BATCH`]).
    pub async fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received.clear();
        imp::receive(socket, &mut self.slots, &mut self.received).await?;
        Ok(self.received.len())
    }

    /// The `index`th datagram of the last [`Inbox::receive`]; `None` when the kernel gave
    /// no usable sender address (then there is nobody to answer).
    pub fn get(&self, index: usize) -> Option<Datagram<'_>> {
        let received = self.received.get(index)?;
        Some(Datagram {
            bytes: &self.slots[index][..received.len.min(SLOT)],
            peer: received.peer?,
            oversize: received.oversize,
        })
    }
}

/// Answers waiting to be sent by one worker.
pub struct Outbox {
    replies: Vec<(Vec<u8>, SocketAddr)>,
}

impl Default for Outbox {
    /// An empty box with room for one batch.
    fn default() -> Outbox {
        Outbox {
            replies: Vec::with_capacity(BATCH),
        }
    }
}

impl Outbox {
    /// Queues `bytes` for `peer` until the next [`Outbox::flush`].
    pub fn push(&mut self, bytes: Vec<u8>, peer: SocketAddr) {
        self.replies.push((bytes, peer));
    }

    /// Sends every waiting answer and empties the box. An answer the kernel refuses (an
    /// unreachable peer, say) is logged at debug and skipped; the rest still go.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        while sent < self.replies.len() {
            match imp::send(socket, &self.replies[sent..]).await {
                Ok(count) => sent += count.max(1),
                Err(error) => {
                    debug!(peer = %self.replies[sent].1, %error, "UDP send failed");
                    sent += 1;
                }
            }
        }
        self.replies.clear();
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod imp {
    //! `recvmmsg(2)` and `sendmmsg(2)` through tokio's readiness (`async_io` waits until the
    //! socket is ready and retries the call when it would block).
    use super::{BATCH, Received, SLOT};
    use socket2::{SockAddr, SockAddrStorage};
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    pub async fn receive(
        socket: &UdpSocket,
        slots: &mut [[u8; SLOT]],
        received: &mut Vec<Received>,
    ) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        socket
            .async_io(Interest::READABLE, || receive_now(fd, slots, received))
            .await
    }

    /// One non-blocking `recvmmsg`: `WouldBlock` when nothing is waiting.
    fn receive_now(
        fd: i32,
        slots: &mut [[u8; SLOT]],
        received: &mut Vec<Received>,
    ) -> io::Result<()> {
        let count = slots.len().min(BATCH);
        let mut addrs: [SockAddrStorage; BATCH] =
            std::array::from_fn(|_| SockAddrStorage::zeroed());
        // SAFETY: all-zero iovecs and mmsghdrs are valid (null pointers, zero lengths); every
        // one the call can see is filled in below.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, slot) in slots.iter_mut().take(count).enumerate() {
            iovecs[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = (&mut addrs[i] as *mut SockAddrStorage).cast();
            header.msg_namelen = addrs[i].size_of();
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: the headers point at `count` live slots of SLOT bytes and at `count`
        // address storages, all of which outlive the call; the kernel writes only there.
        let done = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                count as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        for (header, addr) in headers.iter().zip(addrs).take(done as usize) {
            // SAFETY: the kernel wrote a sockaddr of this family and length into `addr`.
            let peer = unsafe { SockAddr::new(addr, header.msg_hdr.msg_namelen) }.as_socket();
            received.push(Received {
                len: header.msg_len as usize,
                peer,
                oversize: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(())
    }

    /// Sends a prefix of `replies` with one `sendmmsg`; how many went.
    pub async fn send(socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        socket
            .async_io(Interest::WRITABLE, || send_now(fd, replies))
            .await
    }

    fn send_now(fd: i32, replies: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
        let count = replies.len().min(BATCH);
        let addrs: Vec<SockAddr> = replies[..count]
            .iter()
            .map(|(_, peer)| SockAddr::from(*peer))
            .collect();
        // SAFETY: as in `receive_now`; every header the call sees is filled in below.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, ((bytes, _), addr)) in replies.iter().zip(&addrs).enumerate() {
            iovecs[i] = libc::iovec {
                // sendmmsg only reads through it.
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = addr.as_ptr() as *mut libc::c_void;
            header.msg_namelen = addr.len();
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: the headers point at `count` live answers and addresses that outlive the
        // call; the kernel only reads them.
        let done = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as _,
                libc::MSG_DONTWAIT as _,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(done as usize)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    //! One datagram per call: no batch system calls on this platform.
    use super::{Received, SLOT};
    use std::io;
    use std::net::SocketAddr;
    use tokio::net::UdpSocket;

    pub async fn receive(
        socket: &UdpSocket,
        slots: &mut [[u8; SLOT]],
        received: &mut Vec<Received>,
    ) -> io::Result<()> {
        let Some(slot) = slots.first_mut() else {
            return Ok(());
        };
        let (len, peer) = socket.recv_from(slot).await?;
        received.push(Received {
            len,
            peer: Some(peer),
            // Without MSG_TRUNC a longer datagram is silently cut; it then fails to parse.
            oversize: false,
        });
        Ok(())
    }

    pub async fn send(socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
        match replies.first() {
            Some((bytes, peer)) => socket.send_to(bytes, *peer).await.map(|_| 1),
            None => Ok(0),
        }
    }
}
