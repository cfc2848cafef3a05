//! Janus 1.x VideoRoom as a load target (`confer loadtest --janus URL`), so
//! the same clients measure an established SFU in the same run: one Janus
//! session over its HTTP API, a long-poll task that hands each handle its
//! events, and the publisher and subscriber flows of the VideoRoom plugin.
//! The media side is the load tool's own [`RtcPeer`]s.

use super::peer::RtcPeer;
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// One Janus session shared by every client of the run.
pub struct Janus {
    http: reqwest::Client,
    base: String,
    session: u64,
    transaction: AtomicU64,
    handles: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>,
    poller: tokio::task::JoinHandle<()>,
}

/// A plugin handle and its events.
pub struct Handle {
    pub id: u64,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Drop for Janus {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Janus {
    /// Create a session at `base` (e.g. `http://198.18.0.1:8088/janus`).
    pub async fn connect(base: &str) -> anyhow::Result<Arc<Janus>> {
        let http = reqwest::Client::new();
        let base = base.trim_end_matches('/').to_owned();
        let v: Value =
            http.post(&base).json(&json!({"janus": "create", "transaction": "c0"})).send().await?.json().await?;
        let session = v["data"]["id"].as_u64().ok_or_else(|| anyhow::anyhow!("janus create: {v}"))?;
        let handles: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>> = Arc::default();
        let (h, client, url) = (handles.clone(), http.clone(), format!("{base}/{session}?maxev=50"));
        // The long poll doubles as the session keepalive.
        let poller = tokio::spawn(async move {
            loop {
                let Ok(resp) = client.get(&url).send().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(v) = resp.json::<Value>().await else { continue };
                let events = match v {
                    Value::Array(a) => a,
                    v => vec![v],
                };
                let handles = h.lock().unwrap_or_else(|e| e.into_inner());
                for e in events {
                    if let Some(tx) = e["sender"].as_u64().and_then(|s| handles.get(&s)) {
                        let _ = tx.send(e);
                    }
                }
            }
        });
        Ok(Arc::new(Janus { http, base, session, transaction: AtomicU64::new(1), handles, poller }))
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(format!("t{}", self.transaction.fetch_add(1, Relaxed)));
        let v: Value =
            self.http.post(format!("{}/{}{path}", self.base, self.session)).json(&body).send().await?.json().await?;
        if v["janus"] == "error" {
            anyhow::bail!("janus: {}", v["error"]);
        }
        Ok(v)
    }

    /// Attach a VideoRoom handle.
    pub async fn attach(&self) -> anyhow::Result<Handle> {
        let v = self.post("", json!({"janus": "attach", "plugin": "janus.plugin.videoroom"})).await?;
        let id = v["data"]["id"].as_u64().ok_or_else(|| anyhow::anyhow!("janus attach: {v}"))?;
        let (tx, events) = mpsc::unbounded_channel();
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        Ok(Handle { id, events })
    }

    /// A plugin message; the synchronous reply (an `ack` for asynchronous requests).
    async fn message(&self, h: &Handle, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let v = self.post(&format!("/{}", h.id), msg).await?;
        if let Some(e) = v["plugindata"]["data"]["error"].as_str() {
            anyhow::bail!("janus videoroom: {e}");
        }
        Ok(v)
    }

    /// Create a VideoRoom for `publishers` publishers of up to `kbps`.
    pub async fn create_room(&self, publishers: usize, kbps: u32) -> anyhow::Result<u64> {
        let h = self.attach().await?;
        let room = rand::random::<u32>() as u64;
        let body = json!({"request": "create", "room": room, "publishers": publishers.max(1),
            "bitrate": kbps as u64 * 2000, "videocodec": "vp8", "audiocodec": "opus", "notify_joining": false});
        let v = self.message(&h, body, None).await?;
        if v["plugindata"]["data"]["videoroom"] != "created" {
            anyhow::bail!("janus create room: {v}");
        }
        Ok(room)
    }

    /// Join `room` as a publisher with `p`, whose offer `offer` is; returns the
    /// publisher's feed id once Janus says its PeerConnection is up. A
    /// simulcast offer lists its rids lowest first, which Janus must be told
    /// (it assumes highest first): substream 0 is then `q`.
    pub async fn publish(&self, room: u64, p: &RtcPeer, offer: String, simulcast: bool) -> anyhow::Result<u64> {
        let mut h = self.attach().await?;
        self.message(&h, json!({"request": "join", "ptype": "publisher", "room": room}), None).await?;
        let joined = h.event("joined", |e| e["plugindata"]["data"]["videoroom"] == "joined").await?;
        let feed =
            joined["plugindata"]["data"]["id"].as_u64().ok_or_else(|| anyhow::anyhow!("no feed id: {joined}"))?;
        let mut jsep = json!({"type": "offer", "sdp": offer});
        if simulcast {
            jsep["rid_order"] = json!("lmh");
        }
        self.message(&h, json!({"request": "publish"}), Some(jsep)).await?;
        let answered = h.event("the publish answer", |e| e.get("jsep").is_some()).await?;
        let sdp = answered["jsep"]["sdp"].as_str().unwrap_or_default().to_owned();
        p.ctl
            .try_with(move |pc, now| RTCSessionDescription::answer(sdp).and_then(|a| pc.set_remote_description(now, a)))
            .await
            .ok_or_else(|| anyhow::anyhow!("publisher peer stopped"))??;
        self.post(&format!("/{}", h.id), json!({"janus": "trickle", "candidate": {"completed": true}})).await?;
        // Janus refuses subscribers until the publisher is up.
        h.event("webrtcup", |e| e["janus"] == "webrtcup").await?;
        Ok(feed)
    }

    /// Subscribe `p` to `feed` in `room`: Janus offers, `p` answers. Returns
    /// the handle and the mid of the video in Janus's offer (what
    /// [`Janus::configure_substream`] names).
    pub async fn subscribe(&self, room: u64, feed: u64, p: &RtcPeer) -> anyhow::Result<(Handle, String)> {
        let mut h = self.attach().await?;
        let body = json!({"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]});
        self.message(&h, body, None).await?;
        let offered = h.event("the subscriber offer", |e| e.get("jsep").is_some()).await?;
        let sdp = offered["jsep"]["sdp"].as_str().unwrap_or_default().to_owned();
        let video_mid = video_mid(&sdp).unwrap_or_default();
        let answer = p
            .ctl
            .try_with(move |pc, now| -> anyhow::Result<String> {
                pc.set_remote_description(now, RTCSessionDescription::offer(sdp)?)?;
                let answer = pc.create_answer(None)?;
                pc.set_local_description(now, answer.clone())?;
                Ok(answer.sdp)
            })
            .await
            .ok_or_else(|| anyhow::anyhow!("subscriber peer stopped"))??;
        self.message(&h, json!({"request": "start"}), Some(json!({"type": "answer", "sdp": answer}))).await?;
        self.post(&format!("/{}", h.id), json!({"janus": "trickle", "candidate": {"completed": true}})).await?;
        Ok((h, video_mid))
    }

    /// Ask Janus to send subscriber handle `h` simulcast layer `substream`
    /// (0 lowest) of its stream `mid`; Janus switches at that layer's next
    /// keyframe, asking the publisher for one.
    pub async fn configure_substream(&self, h: &Handle, mid: &str, substream: u8) -> anyhow::Result<()> {
        let body = json!({"request": "configure", "streams": [{"mid": mid, "substream": substream}]});
        self.message(h, body, None).await?;
        Ok(())
    }
}

impl Handle {
    /// The next event matching `pred` (others are dropped), within 20 s.
    async fn event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if pred(&e) => return Ok(e),
                Ok(Some(e)) if e["plugindata"]["data"]["error"].is_string() => {
                    anyhow::bail!("janus: {}", e["plugindata"]["data"]["error"])
                }
                Ok(Some(_)) => {}
                _ => anyhow::bail!("janus: timed out waiting for {what}"),
            }
        }
    }
}

/// The mid of the first video m-line of `sdp`.
fn video_mid(sdp: &str) -> Option<String> {
    let video = &sdp[sdp.find("m=video")?..];
    let video = video[1..].find("\nm=").map_or(video, |end| &video[..end + 1]);
    video.lines().find_map(|l| l.strip_prefix("a=mid:")).map(|m| m.trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_video_mid_is_read_from_its_own_section() {
        let sdp = "v=0\r\nm=audio 9 UDP 111\r\na=mid:0\r\nm=video 9 UDP 96\r\na=sendonly\r\na=mid:1\r\nm=application 9 x\r\na=mid:2\r\n";
        assert_eq!(super::video_mid(sdp).as_deref(), Some("1"));
        assert_eq!(super::video_mid("v=0\r\nm=audio 9 UDP 111\r\na=mid:0\r\n"), None);
    }
}
