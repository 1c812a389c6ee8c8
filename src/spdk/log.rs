//! The `log` crate routed into SPDK's log. Errors, warnings and info (as notices) always
//! reach it; info, debug and trace only when the `pcache` log flag is enabled
//! (`log_set_flag pcache`, or `-L pcache`), as SPDK's own INFOLOG does.

use std::ffi::{c_char, CString};

use spdk_sys as sys;

struct SpdkLogger;

static LOGGER: SpdkLogger = SpdkLogger;
const FLAG: &std::ffi::CStr = c"pcache";

impl ::log::Log for SpdkLogger {
    fn enabled(&self, meta: &::log::Metadata) -> bool {
        meta.level() <= ::log::Level::Info || flag_enabled()
    }

    fn log(&self, record: &::log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            ::log::Level::Error => sys::SPDK_LOG_ERROR,
            ::log::Level::Warn => sys::SPDK_LOG_WARN,
            ::log::Level::Info => sys::SPDK_LOG_NOTICE,
            ::log::Level::Debug | ::log::Level::Trace => sys::SPDK_LOG_INFO,
        };
        let msg = CString::new(format!("pcache: {}\n", record.args()).replace('\0', "")).unwrap_or_default();
        let file = CString::new(record.file().unwrap_or("pcache")).unwrap_or_default();
        let func = CString::new(record.target()).unwrap_or_default();
        // SAFETY: all strings are NUL-terminated and live across the call; the
        // format is a literal "%s" consuming exactly one string argument.
        unsafe {
            sys::spdk_log(
                level,
                file.as_ptr(),
                record.line().unwrap_or(0) as i32,
                func.as_ptr(),
                c"%s".as_ptr(),
                msg.as_ptr() as *const c_char,
            )
        };
    }

    fn flush(&self) {}
}

fn flag_enabled() -> bool {
    // SAFETY: looks up a registered flag by name.
    unsafe { sys::spdk_log_get_flag(FLAG.as_ptr()) }
}

/// Registers the `pcache` log flag and installs the logger. Called once, from
/// the library's constructor.
pub fn register() {
    let flag = Box::leak(Box::new(sys::spdk_log_flag { name: FLAG.as_ptr(), enabled: false, ..Default::default() }));
    // SAFETY: the flag lives for the life of the process, as SPDK requires.
    unsafe { sys::spdk_log_register_flag(FLAG.as_ptr(), flag) };
    if ::log::set_logger(&LOGGER).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Trace);
    }
}
