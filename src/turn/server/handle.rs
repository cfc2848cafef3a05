//! What the server does with one message from a client: STUN requests and
//! indications, or ChannelData. Replies go back through the client's sink.

use super::*;

/// REQUESTED-ADDRESS-FAMILY values (RFC 8656 18.8).
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// How a request was authenticated: the key for MESSAGE-INTEGRITY on replies.
struct Authed {
    username: String,
    key: [u8; 16],
}

impl Inner {
    pub(super) async fn handle(self: &Arc<Self>, ck: ClientKey, sink: &Sink, data: &[u8], out: &mut Vec<u8>) {
        // ChannelData: channel numbers 0x4000-0x4FFF (RFC 8656 12); a first
        // byte of 0x50-0x7F is reserved and, not being STUN either, dropped.
        if data.first().is_some_and(|b| (0x40..=0x4F).contains(b)) {
            return self.channel_data(ck, data).await;
        }
        let Ok(msg) = Message::parse(data) else { return };
        // RFC 8489 6.3.1: a request with a comprehension-required attribute
        // the server does not know gets 420 listing them in UNKNOWN-ATTRIBUTES.
        if msg.class == Class::Request {
            let unknown = msg.unknown_required();
            if !unknown.is_empty() {
                let mut b = Builder::new(out, msg.method, Class::Error, msg.tid);
                let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
                b.error(420, "Unknown Attribute").attr(stun::UNKNOWN_ATTRIBUTES, &list).fingerprint();
                return sink.send(out).await;
            }
        }
        match (msg.class, msg.method) {
            (Class::Request, stun::BINDING) => {
                let mut b = Builder::new(out, stun::BINDING, Class::Success, msg.tid);
                b.xor_addr(stun::XOR_MAPPED_ADDRESS, ck.addr).fingerprint();
                sink.send(out).await;
            }
            (Class::Indication, stun::SEND) => self.send_indication(ck, &msg).await,
            (
                Class::Request,
                method @ (stun::ALLOCATE | stun::REFRESH | stun::CREATE_PERMISSION | stun::CHANNEL_BIND),
            ) => {
                let auth = match self.authenticate(&msg, out) {
                    Ok(a) => a,
                    Err(()) => return sink.send(out).await,
                };
                let result = match method {
                    stun::ALLOCATE => self.allocate(ck, sink, &msg, &auth, out).await,
                    stun::REFRESH => self.refresh(ck, &msg, &auth, out),
                    stun::CREATE_PERMISSION => self.create_permission(ck, &msg, &auth, out),
                    _ => self.channel_bind(ck, &msg, &auth, out),
                };
                if let Err((code, reason)) = result {
                    let mut b = Builder::new(out, method, Class::Error, msg.tid);
                    b.error(code, reason).integrity(&auth.key).fingerprint();
                }
                sink.send(out).await;
            }
            _ => {}
        }
    }

    /// Long-term credentials with the TURN REST username. On failure `out`
    /// holds the 401 or 438 reply.
    fn authenticate(&self, msg: &Message<'_>, out: &mut Vec<u8>) -> Result<Authed, ()> {
        let now = crate::auth::unix_now();
        let challenge = |out: &mut Vec<u8>, code: u16, reason: &str| {
            let nonce = self.nonce(now);
            let mut b = Builder::new(out, msg.method, Class::Error, msg.tid);
            b.error(code, reason)
                .attr(stun::REALM, self.realm.as_bytes())
                .attr(stun::NONCE, nonce.as_bytes())
                .fingerprint();
        };
        let (Some(username), Some(_), Some(nonce)) =
            (msg.text(stun::USERNAME), msg.attr(stun::MESSAGE_INTEGRITY), msg.text(stun::NONCE))
        else {
            challenge(out, 401, "Unauthorized");
            return Err(());
        };
        if msg.text(stun::REALM) != Some(self.realm.as_str()) {
            challenge(out, 401, "Unauthorized");
            return Err(());
        }
        if !self.nonce_valid(nonce, now) {
            challenge(out, 438, "Stale Nonce");
            return Err(());
        }
        let fresh = credentials::expiry_of(username).is_some_and(|exp| exp > now);
        let key = stun::long_term_key(username, &self.realm, &credentials::password_for(&self.secret, username));
        if !fresh || !msg.check_integrity(&key) {
            self.metrics.auth_failures.inc();
            challenge(out, 401, "Unauthorized");
            return Err(());
        }
        Ok(Authed { username: username.to_owned(), key })
    }

    fn nonce(&self, now: u64) -> String {
        let exp = now + NONCE_LIFETIME;
        format!("{exp:x}-{}", self.nonce_mac(exp))
    }

    fn nonce_mac(&self, exp: u64) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("any key length");
        mac.update(&exp.to_be_bytes());
        mac.finalize().into_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn nonce_valid(&self, nonce: &str, now: u64) -> bool {
        let Some((exp, mac)) = nonce.split_once('-') else { return false };
        let Ok(exp) = u64::from_str_radix(exp, 16) else { return false };
        exp > now && self.nonce_mac(exp) == mac
    }

    async fn allocate(
        self: &Arc<Self>,
        ck: ClientKey,
        sink: &Sink,
        msg: &Message<'_>,
        auth: &Authed,
        out: &mut Vec<u8>,
    ) -> Result<(), (u16, &'static str)> {
        let existing = self.allocs.lock().get(&ck).cloned();
        if let Some(a) = existing {
            if a.tid == msg.tid && a.username == auth.username {
                out.clear();
                out.extend_from_slice(&a.response);
                return Ok(());
            }
            return Err((437, "Allocation Mismatch"));
        }
        match msg.attr(stun::REQUESTED_TRANSPORT) {
            Some(v) if v.len() == 4 && v[0] == 17 => {}
            Some(v) if v.len() == 4 => return Err((442, "Unsupported Transport Protocol")),
            _ => return Err((400, "Bad Request")),
        }
        // RFC 8656 7.2: the relayed address is of the family asked for, and
        // this server relays on one address only: turn.relay_ip, else the
        // one the request arrived on (SPEC 6), bound there unless
        // turn.listen names one address.
        let bind_ip = if self.listen_ip.is_unspecified() { ck.local } else { self.listen_ip };
        let shown_ip = self.relay_ip.unwrap_or(bind_ip);
        match msg.attr(stun::REQUESTED_ADDRESS_FAMILY) {
            None => {}
            Some(v) if v.len() == 4 => {
                let ours = if shown_ip.is_ipv4() { FAMILY_IPV4 } else { FAMILY_IPV6 };
                if v[0] != ours {
                    return Err((440, "Address Family not Supported"));
                }
            }
            Some(_) => return Err((400, "Bad Request")),
        }
        let user = auth.username.split_once(':').map(|(_, u)| u).unwrap_or(&auth.username).to_owned();
        if self.allocs.lock().values().filter(|a| a.user == user).count() >= self.user_quota {
            return Err((486, "Allocation Quota Reached"));
        }
        let relay = self.bind_relay(bind_ip).await.ok_or((508, "Insufficient Capacity"))?;
        let bound = relay.local_addr().map_err(|_| (508, "Insufficient Capacity"))?;
        let relay_addr = SocketAddr::new(shown_ip, bound.port());
        let lifetime = msg.u32_attr(stun::LIFETIME).unwrap_or(DEFAULT_LIFETIME).clamp(DEFAULT_LIFETIME, MAX_LIFETIME);
        let mut b = Builder::new(out, stun::ALLOCATE, Class::Success, msg.tid);
        b.xor_addr(stun::XOR_RELAYED_ADDRESS, relay_addr)
            .u32(stun::LIFETIME, lifetime)
            .xor_addr(stun::XOR_MAPPED_ADDRESS, ck.addr)
            .integrity(&auth.key)
            .fingerprint();
        let now = Instant::now();
        let alloc = Arc::new(Alloc {
            user,
            username: auth.username.clone(),
            relay: Arc::new(relay),
            relay_addr,
            tid: msg.tid,
            response: out.clone(),
            sink: sink.clone(),
            expires: Mutex::new(now + Duration::from_secs(lifetime.into())),
            state: Mutex::new(AllocState::default()),
            bucket: Mutex::new(Bucket { tokens: BANDWIDTH_BYTES_PER_SEC, last: now }),
            task: Mutex::new(None),
        });
        {
            let mut allocs = self.allocs.lock();
            if allocs.contains_key(&ck) {
                return Err((437, "Allocation Mismatch"));
            }
            allocs.insert(ck, alloc.clone());
            self.metrics.allocations.set(allocs.len() as i64);
        }
        let task = tokio::spawn(relay_loop(alloc.clone(), self.clone()));
        *alloc.task.lock() = Some(task.abort_handle());
        Ok(())
    }

    /// A relay socket on a free port of `turn.relay_port_min..=max`, tried
    /// from a random starting point.
    async fn bind_relay(&self, ip: IpAddr) -> Option<UdpSocket> {
        let (lo, hi) = self.ports;
        let span = u32::from(hi - lo) + 1;
        let start: u32 = rand::random::<u32>() % span;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
                return Some(s);
            }
        }
        None
    }

    fn refresh(
        &self,
        ck: ClientKey,
        msg: &Message<'_>,
        auth: &Authed,
        out: &mut Vec<u8>,
    ) -> Result<(), (u16, &'static str)> {
        let alloc = self.alloc_for(ck, auth)?;
        let asked = msg.u32_attr(stun::LIFETIME).unwrap_or(DEFAULT_LIFETIME);
        let lifetime = if asked == 0 { 0 } else { asked.clamp(DEFAULT_LIFETIME, MAX_LIFETIME) };
        if lifetime == 0 {
            let removed = self.allocs.lock().remove(&ck);
            if let Some(a) = removed {
                self.drop_alloc(&a);
            }
        } else {
            *alloc.expires.lock() = Instant::now() + Duration::from_secs(lifetime.into());
        }
        let mut b = Builder::new(out, stun::REFRESH, Class::Success, msg.tid);
        b.u32(stun::LIFETIME, lifetime).integrity(&auth.key).fingerprint();
        Ok(())
    }

    fn create_permission(
        &self,
        ck: ClientKey,
        msg: &Message<'_>,
        auth: &Authed,
        out: &mut Vec<u8>,
    ) -> Result<(), (u16, &'static str)> {
        let alloc = self.alloc_for(ck, auth)?;
        let peers: Vec<SocketAddr> =
            msg.attrs(stun::XOR_PEER_ADDRESS).filter_map(|v| stun::decode_xor_addr(v, &msg.tid)).collect();
        if peers.is_empty() {
            return Err((400, "Bad Request"));
        }
        if let Some(p) = peers.iter().find(|p| !self.filter.permits(p.ip())) {
            self.metrics.denied_peers.inc();
            tracing::debug!(peer = %p.ip(), "TURN permission refused: peer address not allowed");
            return Err((403, "Forbidden"));
        }
        if peers.iter().any(|p| p.is_ipv4() != alloc.relay_addr.is_ipv4()) {
            return Err((443, "Peer Address Family Mismatch"));
        }
        let until = Instant::now() + PERMISSION_LIFETIME;
        let mut st = alloc.state.lock();
        for p in peers {
            st.perms.insert(p.ip(), until);
        }
        drop(st);
        Builder::new(out, stun::CREATE_PERMISSION, Class::Success, msg.tid).integrity(&auth.key).fingerprint();
        Ok(())
    }

    fn channel_bind(
        &self,
        ck: ClientKey,
        msg: &Message<'_>,
        auth: &Authed,
        out: &mut Vec<u8>,
    ) -> Result<(), (u16, &'static str)> {
        let alloc = self.alloc_for(ck, auth)?;
        let ch = msg.attr(stun::CHANNEL_NUMBER).filter(|v| v.len() == 4).map(|v| u16::from_be_bytes([v[0], v[1]]));
        let (Some(ch), Some(peer)) = (ch, msg.xor_addr(stun::XOR_PEER_ADDRESS)) else {
            return Err((400, "Bad Request"));
        };
        // A denied peer hears 403 whatever channel it asked for (SPEC 6).
        if !self.filter.permits(peer.ip()) {
            self.metrics.denied_peers.inc();
            return Err((403, "Forbidden"));
        }
        // RFC 8656 12: channel numbers are 0x4000 through 0x4FFF (RFC 5766
        // allowed up to 0x7FFF, which coturn's uclient still picks from).
        if !(0x4000..=0x4FFF).contains(&ch) {
            return Err((400, "Bad Request"));
        }
        if peer.is_ipv4() != alloc.relay_addr.is_ipv4() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        let now = Instant::now();
        let mut st = alloc.state.lock();
        let clash_ch = st.channels.get(&ch).is_some_and(|(p, _)| *p != peer);
        let clash_peer = st.by_peer.get(&peer).is_some_and(|c| *c != ch);
        if clash_ch || clash_peer {
            return Err((400, "Bad Request"));
        }
        st.channels.insert(ch, (peer, now + CHANNEL_LIFETIME));
        st.by_peer.insert(peer, ch);
        st.perms.insert(peer.ip(), now + PERMISSION_LIFETIME);
        drop(st);
        Builder::new(out, stun::CHANNEL_BIND, Class::Success, msg.tid).integrity(&auth.key).fingerprint();
        Ok(())
    }

    /// The client's allocation, made with the same username.
    fn alloc_for(&self, ck: ClientKey, auth: &Authed) -> Result<Arc<Alloc>, (u16, &'static str)> {
        let alloc = self.allocs.lock().get(&ck).cloned().ok_or((437, "Allocation Mismatch"))?;
        if alloc.username != auth.username {
            return Err((441, "Wrong Credentials"));
        }
        Ok(alloc)
    }

    async fn send_indication(&self, ck: ClientKey, msg: &Message<'_>) {
        let Some(alloc) = self.allocs.lock().get(&ck).cloned() else { return };
        let (Some(peer), Some(data)) = (msg.xor_addr(stun::XOR_PEER_ADDRESS), msg.attr(stun::DATA_ATTR)) else {
            return;
        };
        self.relay_to(&alloc, peer, data).await;
    }

    async fn channel_data(&self, ck: ClientKey, data: &[u8]) {
        if data.len() < 4 {
            return;
        }
        let ch = u16::from_be_bytes([data[0], data[1]]);
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        let Some(payload) = data.get(4..4 + len) else { return };
        let Some(alloc) = self.allocs.lock().get(&ck).cloned() else { return };
        let peer = alloc.state.lock().channels.get(&ch).map(|(p, _)| *p);
        if let Some(peer) = peer {
            self.relay_to(&alloc, peer, payload).await;
        }
    }

    async fn relay_to(&self, alloc: &Alloc, peer: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        if !alloc.permitted(peer.ip(), now) || !alloc.bucket.lock().take(data.len(), now) {
            return;
        }
        let sent = match alloc.relay.try_send_to(data, peer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => alloc.relay.send_to(data, peer).await.is_ok(),
            r => r.is_ok(),
        };
        if sent {
            self.metrics.bytes.inc_by(data.len() as u64);
        }
    }

    pub(super) fn drop_alloc(&self, a: &Alloc) {
        if let Some(t) = a.task.lock().take() {
            t.abort();
        }
        self.metrics.allocations.set(self.allocs.lock().len() as i64);
        tracing::debug!(relay = %a.relay_addr, "TURN allocation released");
    }
}
