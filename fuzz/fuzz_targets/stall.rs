//! One raw stream record (any bytes, usually JSON) through draft and
//! message as the batch loop plans it, against the stall oracle of #28:
//! every header and short string within its bound, every dead letter
//! within `MAX_MESSAGE_BYTES` (tests/integration/hunt.rs runs the same
//! oracle against the broker).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        event_forwarder_fuzz::check_stall(raw);
    }
});
