//! The whole event: arbitrary bytes split into records as the function
//! splits an invocation's body, which must agree with serde_json's split
//! of any body serde_json takes; then every record planned as the batch
//! loop plans it.
#![no_main]

use event_forwarder::{RecordText, StreamBatch, engine::parse_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = parse_batch(data);
    if let Ok(batch) = serde_json::from_slice::<StreamBatch>(data) {
        let split = split.as_ref().expect("a body serde_json takes is a batch");
        let texts: Vec<&str> = batch.records.iter().map(|r| r.text()).collect();
        assert_eq!(split.records, texts, "the records of a body");
        assert_eq!(split.target, batch.target, "the target of a body");
    }
    if let Ok(batch) = split {
        event_forwarder_fuzz::check_raw(&batch.records);
    }
});
