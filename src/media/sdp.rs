//! Small, safe edits to the SDP the SFU sends, and one read of the SDP a
//! publisher sends. Hand-written because both only scan lines (webrtc-rs
//! parses the SDP itself; these are the two things it does not do): every
//! m-section gets the server's candidates and `a=end-of-candidates`. webrtc-rs writes the candidates into the first
//! m-section only, which JSEP allows under BUNDLE, but some stacks (aiortc)
//! read the candidates of one bundled section and not another; an ICE-lite
//! server has all its candidates up front, so saying so everywhere is true.

/// Copy the candidate lines of the section that has them into every media
/// section, and end each section's candidates.
pub fn candidates_everywhere(sdp: &str) -> String {
    let nl = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = sdp.lines().collect();
    let candidates: Vec<&str> =
        lines.iter().copied().filter(|l| l.starts_with("a=candidate:")).fold(Vec::new(), |mut v, l| {
            if !v.contains(&l) {
                v.push(l);
            }
            v
        });
    if candidates.is_empty() {
        return sdp.to_owned();
    }
    // Split into the session part and the media sections.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for l in lines {
        if l.starts_with("m=") {
            sections.push(Vec::new());
        }
        sections.last_mut().expect("never empty").push(l);
    }
    let mut out = String::with_capacity(sdp.len() + candidates.len() * 64 * sections.len());
    for (i, section) in sections.iter().enumerate() {
        for l in section.iter().filter(|l| i == 0 || (!l.starts_with("a=candidate:") && **l != "a=end-of-candidates")) {
            out.push_str(l);
            out.push_str(nl);
        }
        if i > 0 {
            for c in &candidates {
                out.push_str(c);
                out.push_str(nl);
            }
            out.push_str("a=end-of-candidates");
            out.push_str(nl);
        }
    }
    out
}

/// The `a=ssrc-group:SIM` of each media section that has one: (its mid, its
/// SSRCs as listed, lowest layer first). A section without a mid, a group with
/// fewer than two SSRCs, and anything that does not parse are left out.
pub fn simulcast_groups(sdp: &str) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    let mut section: Option<(Option<&str>, Option<Vec<u32>>)> = None;
    let close = |s: Option<(Option<&str>, Option<Vec<u32>>)>, out: &mut Vec<(String, Vec<u32>)>| {
        if let Some((Some(mid), Some(ssrcs))) = s {
            out.push((mid.to_owned(), ssrcs));
        }
    };
    for l in sdp.lines() {
        if l.starts_with("m=") {
            close(section.take(), &mut out);
            section = Some((None, None));
        } else if let Some((mid, group)) = section.as_mut() {
            if let Some(m) = l.strip_prefix("a=mid:") {
                *mid = Some(m.trim());
            } else if let Some(g) = l.strip_prefix("a=ssrc-group:SIM ") {
                let ssrcs: Option<Vec<u32>> = g.split_whitespace().map(|s| s.parse().ok()).collect();
                if group.is_none() {
                    *group = ssrcs.filter(|s| s.len() >= 2);
                }
            }
        }
    }
    close(section, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_groups_are_read_per_media_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ssrc:5 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=ssrc-group:FID 10 11\r\na=ssrc-group:SIM 10 20 30\r\n\
a=ssrc:10 cname:x\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=ssrc-group:SIM 40\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ssrc-group:SIM 1 2\r\nm=video 9 RTP 96\r\na=mid:4\r\na=ssrc-group:SIM 1 x\r\n";
        assert_eq!(simulcast_groups(sdp), [("1".to_owned(), vec![10, 20, 30])]);
        assert!(simulcast_groups("").is_empty());
        assert!(simulcast_groups("a=ssrc-group:SIM 1 2\nm=video\n").is_empty());
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n";

    #[test]
    fn every_section_gets_the_candidates_once() {
        let out = candidates_everywhere(OFFER);
        assert_eq!(out.matches("a=candidate:1 1 udp").count(), 2, "{out}");
        assert_eq!(out.matches("a=end-of-candidates").count(), 2, "{out}");
        let audio = &out[out.find("m=audio").unwrap()..];
        assert!(audio.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n"));
        assert!(out.starts_with("v=0\r\n") && out.ends_with("\r\n"));
        // Idempotent.
        assert_eq!(candidates_everywhere(&out), out);
    }

    #[test]
    fn sdp_without_candidates_is_unchanged() {
        let s = "v=0\r\nm=audio 9 RTP/AVP 0\r\n";
        assert_eq!(candidates_everywhere(s), s);
        assert_eq!(candidates_everywhere(""), "");
    }
}
