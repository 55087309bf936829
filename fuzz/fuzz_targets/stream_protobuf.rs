#![no_main]

libfuzzer_sys::fuzz_target!(init: larder_fuzz::under_libfuzzer(), |data: &[u8]| {
    larder_fuzz::stream_protobuf(data)
});
