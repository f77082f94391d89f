//! The whole event: arbitrary bytes parsed as the Lambda runtime does
//! (serde_json into a stream batch of raw records), then every record
//! planned as the batch loop plans it.
#![no_main]

use event_forwarder::StreamBatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<StreamBatch>(data) {
        event_forwarder_fuzz::check_raw(&batch.records);
    }
});
