//! Any bytes as a REST JSON body: the edge's parser answers Ok or a 400, and
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for r in confer::http::parse_every_body(data) {
        if let Err(e) = r {
            assert_eq!(e.status.as_u16(), 400, "{}", e.message);
        }
    }
});
