//! Socket creation with socket2: address reuse, SO_REUSEPORT for one socket per UDP worker,
//! and large kernel buffers, with what the kernel actually granted reported rather than assumed.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use tracing::{info, warn};

/// Kernel buffer sizes to ask for on UDP sockets.
#[derive(Clone, Copy, Debug)]
pub struct BufferSizes {
    /// SO_RCVBUF: absorbs bursts while workers are busy.
    pub recv: usize,
    /// SO_SNDBUF.
    pub send: usize,
}

fn domain(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// A non-blocking UDP socket bound to `addr` with SO_REUSEPORT, so several workers can each
/// own a socket on the same port and the kernel spreads datagrams over them.
pub fn bind_udp(addr: SocketAddr, buffers: BufferSizes) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(domain(&addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    set_buffers(&socket, addr, buffers);
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket.into())
}

/// Asks for the configured buffers and says so when the kernel granted less: the fix
/// (`net.core.rmem_max`/`wmem_max`) is an operator's, and guessing hides drops under load.
fn set_buffers(socket: &Socket, addr: SocketAddr, buffers: BufferSizes) {
    if let Err(error) = socket.set_recv_buffer_size(buffers.recv) {
        warn!(%addr, %error, "could not set the UDP receive buffer size");
    }
    if let Err(error) = socket.set_send_buffer_size(buffers.send) {
        warn!(%addr, %error, "could not set the UDP send buffer size");
    }
    // Linux reports twice the usable size it granted (socket(7)).
    let granted_recv = socket.recv_buffer_size().unwrap_or(0) / 2;
    let granted_send = socket.send_buffer_size().unwrap_or(0) / 2;
    if granted_recv < buffers.recv || granted_send < buffers.send {
        warn!(
            %addr,
            asked_recv = buffers.recv,
            granted_recv,
            asked_send = buffers.send,
            granted_send,
            "kernel granted smaller UDP buffers than configured; raise net.core.rmem_max and net.core.wmem_max"
        );
    } else {
        info!(%addr, granted_recv, granted_send, "UDP socket buffers");
    }
}

/// A non-blocking TCP listener on `addr`.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(domain(&addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    Ok(socket.into())
}
