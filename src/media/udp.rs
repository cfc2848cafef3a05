//! Batched UDP I/O for the media socket: `recvmmsg` and `sendmmsg`, one
//! system call for up to [`BATCH`] datagrams, into and out of buffers that
//! are allocated once.
//!
//! Hand-written on `libc` because no maintained crate fits an SFU's fan-out:
//! quinn-udp batches with GSO, which needs every segment to go to the same
//! address with the same size, while one forwarded packet here becomes many
//! datagrams of different sizes to many addresses. On other platforms than
//! Linux the same interface falls back to one call per datagram.

use std::io;
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Largest datagram read; bigger ones are truncated (and then rejected by
/// the parsers), as with any fixed receive buffer.
const MAX_DATAGRAM: usize = 2048;

/// Outgoing datagrams waiting for one `sendmmsg`. Its buffers grow to
/// [`BATCH`] on first use and are reused after that; an empty one costs
/// nothing to make.
#[derive(Default)]
pub struct SendBatch {
    data: Vec<Vec<u8>>,
    len: Vec<usize>,
    to: Vec<SocketAddr>,
    n: usize,
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

impl SendBatch {
    /// Queue a copy of `data` for `to`, sending the batch first when full.
    /// Returns how many datagrams could not be sent.
    pub fn push(&mut self, socket: &UdpSocket, data: &[u8], to: SocketAddr) -> usize {
        let failed = if self.n == BATCH { self.flush(socket) } else { 0 };
        if self.n == self.data.len() {
            self.data.push(Vec::with_capacity(1500));
            self.len.push(0);
            self.to.push(unspecified());
        }
        let slot = &mut self.data[self.n];
        slot.clear();
        slot.extend_from_slice(data);
        self.len[self.n] = data.len();
        self.to[self.n] = to;
        self.n += 1;
        failed
    }

    /// Send everything queued. Returns how many datagrams could not be sent
    /// (the socket's buffer was full, or the kernel refused them).
    pub fn flush(&mut self, socket: &UdpSocket) -> usize {
        let n = std::mem::take(&mut self.n);
        if n == 0 {
            return 0;
        }
        let mut sent = 0;
        let mut failed = 0;
        // A refused datagram (EPERM, EINVAL for an odd address) stops a
        // batch at that datagram: skip it and go on with the rest.
        while sent + failed < n {
            let from = sent + failed;
            match send_many(socket, &self.data[from..n], &self.len[from..n], &self.to[from..n]) {
                Ok(k) if k > 0 => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    failed += n - from;
                    break;
                }
                _ => failed += 1,
            }
        }
        failed
    }
}

#[cfg(target_os = "linux")]
fn send_many(socket: &UdpSocket, data: &[Vec<u8>], len: &[usize], to: &[SocketAddr]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let n = data.len().min(BATCH);
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        let addr_len = write_sockaddr(&to[i], &mut addrs[i]);
        iovs[i] = libc::iovec { iov_base: data[i].as_ptr() as *mut libc::c_void, iov_len: len[i] };
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = addr_len;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    socket.try_io(Interest::WRITABLE, || {
        // SAFETY: `msgs[..n]` point into `addrs`, `iovs` and `data`, which
        // all outlive the call; the kernel only reads them.
        let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn send_many(socket: &UdpSocket, data: &[Vec<u8>], len: &[usize], to: &[SocketAddr]) -> io::Result<usize> {
    socket.try_send_to(&data[0][..len[0]], to[0]).map(|_| 1)
}

#[cfg(target_os = "linux")]
fn write_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let s = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let s = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(target_os = "linux")]
fn read_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((a.sin_addr.s_addr.to_ne_bytes(), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    len: [usize; BATCH],
    from: [SocketAddr; BATCH],
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self { bufs: vec![[0; MAX_DATAGRAM]; BATCH], len: [0; BATCH], from: [unspecified(); BATCH], n: 0 }
    }
}

impl RecvBatch {
    /// Read what is waiting, up to [`BATCH`] datagrams, without blocking.
    /// `Err(WouldBlock)` when there is nothing.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.n = 0;
        self.n = recv_many(socket, &mut self.bufs, &mut self.len, &mut self.from)?;
        Ok(self.n)
    }

    /// The datagrams the last `recv` read.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        (0..self.n).map(|i| (&self.bufs[i][..self.len[i]], self.from[i]))
    }
}

#[cfg(target_os = "linux")]
fn recv_many(
    socket: &UdpSocket,
    bufs: &mut [[u8; MAX_DATAGRAM]],
    len: &mut [usize; BATCH],
    from: &mut [SocketAddr; BATCH],
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        iovs[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr() as *mut libc::c_void, iov_len: MAX_DATAGRAM };
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    let n = socket.try_io(Interest::READABLE, || {
        // SAFETY: every header points at a buffer, an iovec and an address
        // slot owned by this frame or by `bufs`, valid for the call.
        let r = unsafe {
            libc::recvmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as libc::c_uint, 0, std::ptr::null_mut())
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })?;
    let mut kept = 0;
    for i in 0..n {
        // A datagram from an address we cannot read is dropped.
        let Some(addr) = read_sockaddr(&addrs[i]) else { continue };
        if kept != i {
            bufs.swap(kept, i);
        }
        len[kept] = (msgs[i].msg_len as usize).min(MAX_DATAGRAM);
        from[kept] = addr;
        kept += 1;
    }
    Ok(kept)
}

#[cfg(not(target_os = "linux"))]
fn recv_many(
    socket: &UdpSocket,
    bufs: &mut [[u8; MAX_DATAGRAM]],
    len: &mut [usize; BATCH],
    from: &mut [SocketAddr; BATCH],
) -> io::Result<usize> {
    let (n, addr) = socket.try_recv_from(&mut bufs[0])?;
    len[0] = n;
    from[0] = addr;
    Ok(1)
}

/// Ask the kernel to stamp every datagram `socket` receives with its
/// arrival time (`SO_TIMESTAMPNS`), read back by [`recv_stamped`]. Used by
/// the load tool, whose subscribers measure latency to the moment a packet
/// reached their host rather than to when their busy task read it. Returns
/// whether the kernel agreed.
pub fn stamp_arrivals(socket: &UdpSocket) -> bool {
    #[cfg(target_os = "linux")]
    return set_socket_option(socket, libc::SO_TIMESTAMPNS, 1);
    #[cfg(not(target_os = "linux"))]
    return false;
}

/// Set a `SOL_SOCKET` option that takes an int; whether the kernel agreed.
pub fn set_socket_option(socket: &impl std::os::fd::AsRawFd, opt: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: a valid socket fd and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Wait for one datagram: its length, its source, and when the kernel
/// received it (`None` unless [`stamp_arrivals`] was set). Cancel-safe, as
/// `recv_from` is.
pub async fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<std::time::SystemTime>)> {
    socket.async_io(Interest::READABLE, || recv_one_stamped(socket, buf)).await
}

#[cfg(target_os = "linux")]
fn recv_one_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<std::time::SystemTime>)> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for one SCM_TIMESTAMPNS (a timespec), aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    h.msg_control = control.as_mut_ptr().cast();
    h.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the header points at `addr`, `iov` (into `buf`) and `control`,
    // all valid and writable for the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut h, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = read_sockaddr(&addr).ok_or_else(|| io::Error::other("a datagram from an unreadable address"))?;
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control data the kernel wrote
    // into `control`, bounded by `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                stamp = Some(std::time::UNIX_EPOCH + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&h, c);
        }
    }
    Ok(((n as usize).min(buf.len()), from, stamp))
}

#[cfg(not(target_os = "linux"))]
fn recv_one_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<std::time::SystemTime>)> {
    socket.try_recv_from(buf).map(|(n, from)| (n, from, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamped read returns the datagram, its source and a kernel arrival
    /// time between the send and the read.
    #[tokio::test]
    async fn a_stamped_read_carries_the_kernel_arrival_time() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(stamp_arrivals(&rx), "SO_TIMESTAMPNS on Linux");
        // The kernel turns stamping on asynchronously; until then a read is
        // stamped with the time of the read.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let before = std::time::SystemTime::now();
        tx.send_to(b"stamped", rx.local_addr().unwrap()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut buf = [0u8; 64];
        let (n, from, stamp) = recv_stamped(&rx, &mut buf).await.unwrap();
        let after = std::time::SystemTime::now();
        assert_eq!((&buf[..n], from), (&b"stamped"[..], tx.local_addr().unwrap()));
        let stamp = stamp.expect("a kernel timestamp");
        assert!(before <= stamp && stamp <= after, "{before:?} <= {stamp:?} <= {after:?}");
        // Read 20 ms after it arrived: the stamp is the arrival, not the read.
        assert!(after.duration_since(stamp).unwrap() >= std::time::Duration::from_millis(15));
        // Without the option there is no stamp.
        tx.send_to(b"plain", tx.local_addr().unwrap()).await.unwrap();
        let (n, _, stamp) = recv_stamped(&tx, &mut buf).await.unwrap();
        assert_eq!((&buf[..n], stamp), (&b"plain"[..], None));
    }

    /// Real sockets on loopback: a batch of differently sized datagrams to
    /// two receivers arrives whole, in order, with the right source, and
    /// more than a batch's worth is sent in several calls.
    #[tokio::test]
    async fn batches_reach_every_address_intact() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("[::1]:0").await.ok();
        // tokio only tries a socket it has seen writable.
        tx.writable().await.unwrap();
        let mut batch = SendBatch::default();
        for i in 0..(BATCH + 6) {
            let payload = vec![i as u8; 10 + i * 7];
            assert_eq!(batch.push(&tx, &payload, a.local_addr().unwrap()), 0);
        }
        assert_eq!(batch.flush(&tx), 0);
        let mut rx = RecvBatch::default();
        let mut got = Vec::new();
        while got.len() < BATCH + 6 {
            a.readable().await.unwrap();
            match rx.recv(&a) {
                Ok(_) => got.extend(rx.iter().map(|(d, from)| (d.to_vec(), from))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
        for (i, (d, from)) in got.iter().enumerate() {
            assert_eq!((d.len(), d.first().copied()), (10 + i * 7, Some(i as u8)), "datagram {i}");
            assert_eq!(*from, tx.local_addr().unwrap());
        }
        // An address of the other family fails alone; the rest still go.
        if let Some(b) = b {
            batch.push(&tx, b"v6", b.local_addr().unwrap());
            batch.push(&tx, b"v4", a.local_addr().unwrap());
            assert_eq!(batch.flush(&tx), 1, "an IPv4 socket cannot send to ::1");
            a.readable().await.unwrap();
            rx.recv(&a).unwrap();
            assert_eq!(rx.iter().next().map(|(d, _)| d.to_vec()), Some(b"v4".to_vec()));
        }
        assert!(matches!(rx.recv(&a), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }
}
