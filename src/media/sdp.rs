//! Small, safe edits to the SDP the SFU sends. Hand-written because it only
//! copies lines: every m-section gets the server's candidates and
//! `a=end-of-candidates`. webrtc-rs writes the candidates into the first
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

#[cfg(test)]
mod tests {
    use super::*;

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
