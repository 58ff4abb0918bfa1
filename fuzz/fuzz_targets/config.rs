//! Configuration files (`config`): any text parsed as the daemon's TOML, then validated; both
//! phases must answer with an error, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reidcam::config::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = toml::from_str::<ConfigFile>(text) {
        let _ = file.validate("fuzz.toml");
    }
});
