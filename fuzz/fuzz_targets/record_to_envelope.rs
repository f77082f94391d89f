//! Record to envelope: fuzz-built DynamoDB images (every attribute type,
//! nested up to 40 levels, numbers valid and not) through both mappings.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut records = Vec::new();
    while let Ok(record) = event_forwarder_fuzz::record(&mut u) {
        records.push(record);
        if records.len() == 4 || u.is_empty() {
            break;
        }
    }
    event_forwarder_fuzz::check_records(&records);
});
