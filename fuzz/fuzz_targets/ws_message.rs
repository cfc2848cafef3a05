//! Any bytes as a `/rtc` text frame: parsing never panics, and whatever
//! parses re-serialises its error (if any) as a valid server event.
#![no_main]

use confer::signal::messages::{parse, ServerEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = parse(text);
        if let Err(e) = env.msg {
            let ev = ServerEvent::error(e.code, e.message, env.req_id);
            let _: serde_json::Value = serde_json::from_str(&ev.to_text()).expect("error events are JSON");
        }
    }
});
