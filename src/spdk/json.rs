//! JSON for the RPC methods: SPDK's parsed parameters turned into a small
//! tree with checked accessors (so every bad or missing parameter gets a clear
//! error), and a writer over `spdk_json_write_ctx`.

use std::ffi::c_char;

use spdk_sys as sys;

use super::ffi::cstring;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number's text as sent; parsed by the accessor that wants it.
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Decodes SPDK's flat value list into a [`Value`]. Returns the value and how
/// many list entries it used.
///
/// # Safety
/// `v` points into a complete, well-formed list produced by SPDK's JSON parser.
unsafe fn decode_at(v: *const sys::spdk_json_val) -> Result<(Value, usize), String> {
    // SAFETY: v points to an entry of a well-formed list (caller's contract).
    let val = unsafe { &*v };
    let bytes = || {
        // SAFETY: a NUMBER's or STRING's start and len span its text in the request's buffer,
        // which SPDK keeps for the whole call.
        let s = unsafe { std::slice::from_raw_parts(val.start as *const u8, val.len as usize) };
        String::from_utf8_lossy(s).into_owned()
    };
    Ok(match val.type_ {
        sys::SPDK_JSON_VAL_NULL => (Value::Null, 1),
        sys::SPDK_JSON_VAL_TRUE => (Value::Bool(true), 1),
        sys::SPDK_JSON_VAL_FALSE => (Value::Bool(false), 1),
        sys::SPDK_JSON_VAL_NUMBER => (Value::Number(bytes()), 1),
        sys::SPDK_JSON_VAL_STRING => (Value::String(bytes()), 1),
        sys::SPDK_JSON_VAL_ARRAY_BEGIN => {
            let end = val.len as usize + 1;
            let mut i = 1;
            let mut items = Vec::new();
            while i < end {
                // SAFETY: an ARRAY_BEGIN's len counts the entries before its ARRAY_END, so with
                // i < end, v.add(i) is the next value of the array, in the same list.
                let (item, n) = unsafe { decode_at(v.add(i)) }?;
                items.push(item);
                i += n;
            }
            (Value::Array(items), end + 1)
        }
        sys::SPDK_JSON_VAL_OBJECT_BEGIN => {
            let end = val.len as usize + 1;
            let mut i = 1;
            let mut fields = Vec::new();
            while i < end {
                // SAFETY: an OBJECT_BEGIN's len counts the entries before its OBJECT_END, so with
                // i < end, v.add(i) is an entry of the same list.
                let name = unsafe { &*v.add(i) };
                if name.type_ != sys::SPDK_JSON_VAL_NAME {
                    return Err("malformed object".into());
                }
                // SAFETY: a NAME's start and len span its text in the request's buffer.
                let key = String::from_utf8_lossy(unsafe {
                    std::slice::from_raw_parts(name.start as *const u8, name.len as usize)
                })
                .into_owned();
                // SAFETY: in a well-formed list a NAME is followed by its value, inside the object.
                let (item, n) = unsafe { decode_at(v.add(i + 1)) }?;
                fields.push((key, item));
                i += 1 + n;
            }
            (Value::Object(fields), end + 1)
        }
        t => return Err(format!("unexpected JSON value type {t}")),
    })
}

/// The parameters of one RPC call. Accessors mark what they read, and
/// [`Params::finish`] rejects anything left over, so a misspelt parameter is an
/// error rather than silently ignored.
pub struct Params {
    method: &'static str,
    fields: Vec<(String, Value, bool)>,
}

pub type ParamResult<T> = Result<T, String>;

impl Params {
    /// # Safety
    /// `raw` is NULL or SPDK's parsed params for the current request.
    pub unsafe fn from_raw(method: &'static str, raw: *const sys::spdk_json_val) -> ParamResult<Params> {
        if raw.is_null() {
            return Ok(Params { method, fields: Vec::new() });
        }
        // SAFETY: raw is not NULL, so it is SPDK's parsed params (caller's contract): a complete list.
        match unsafe { decode_at(raw) }?.0 {
            Value::Object(f) => Ok(Params { method, fields: f.into_iter().map(|(k, v)| (k, v, false)).collect() }),
            other => Err(format!("{method}: params must be an object, not {}", other.kind())),
        }
    }

    fn take(&mut self, name: &str) -> ParamResult<Option<Value>> {
        let mut found = None;
        for f in self.fields.iter_mut().filter(|f| f.0 == name) {
            if found.is_some() {
                return Err(format!("{}: parameter '{name}' is given twice", self.method));
            }
            f.2 = true;
            found = Some(f.1.clone());
        }
        Ok(found)
    }

    pub fn opt_str(&mut self, name: &str) -> ParamResult<Option<String>> {
        match self.take(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("{}: parameter '{name}' must be a string, not {}", self.method, v.kind())),
        }
    }

    pub fn req_str(&mut self, name: &str) -> ParamResult<String> {
        match self.opt_str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(format!("{}: parameter '{name}' must not be empty", self.method)),
            None => Err(format!("{}: missing required parameter '{name}'", self.method)),
        }
    }

    pub fn opt_bool(&mut self, name: &str) -> ParamResult<Option<bool>> {
        match self.take(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(format!("{}: parameter '{name}' must be true or false, not {}", self.method, v.kind())),
        }
    }

    /// An unsigned integer within `[min, max]`.
    pub fn opt_u64(&mut self, name: &str, min: u64, max: u64) -> ParamResult<Option<u64>> {
        match self.take(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(t)) => match t.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => {
                    Err(format!("{}: parameter '{name}' must be an integer from {min} to {max}, not {t}", self.method))
                }
            },
            Some(v) => Err(format!("{}: parameter '{name}' must be a number, not {}", self.method, v.kind())),
        }
    }

    /// Rejects parameters no accessor asked for.
    pub fn finish(self) -> ParamResult<()> {
        let unknown: Vec<&str> = self.fields.iter().filter(|f| !f.2).map(|f| f.0.as_str()).collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: unknown parameter(s): {}", self.method, unknown.join(", ")))
        }
    }
}

/// Writes JSON through SPDK's writer. Names and strings are copied into C
/// strings for the call.
pub struct Writer(*mut sys::spdk_json_write_ctx);

impl Writer {
    /// # Safety
    /// `w` is a live writer for the duration of the `Writer`'s use.
    pub unsafe fn new(w: *mut sys::spdk_json_write_ctx) -> Writer {
        Writer(w)
    }

    pub fn object_begin(&mut self) {
        // SAFETY: live writer (see new).
        unsafe { sys::spdk_json_write_object_begin(self.0) };
    }
    pub fn object_end(&mut self) {
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_object_end(self.0) };
    }
    pub fn array_begin(&mut self) {
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_array_begin(self.0) };
    }
    pub fn array_end(&mut self) {
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_array_end(self.0) };
    }
    pub fn named_object_begin(&mut self, name: &str) {
        let n = cstring(name);
        // SAFETY: as above; n is NUL-terminated.
        unsafe { sys::spdk_json_write_named_object_begin(self.0, n.as_ptr()) };
    }
    pub fn named_array_begin(&mut self, name: &str) {
        let n = cstring(name);
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_named_array_begin(self.0, n.as_ptr()) };
    }
    pub fn named_str(&mut self, name: &str, v: &str) {
        let (n, s) = (cstring(name), cstring(v));
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_named_string(self.0, n.as_ptr(), s.as_ptr() as *const c_char) };
    }
    pub fn named_u64(&mut self, name: &str, v: u64) {
        let n = cstring(name);
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_named_uint64(self.0, n.as_ptr(), v) };
    }
    pub fn named_bool(&mut self, name: &str, v: bool) {
        let n = cstring(name);
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_named_bool(self.0, n.as_ptr(), v) };
    }
    pub fn named_array_str(&mut self, name: &str, items: &[String]) {
        self.named_array_begin(name);
        for i in items {
            self.str(i);
        }
        self.array_end();
    }
    pub fn named_null(&mut self, name: &str) {
        let n = cstring(name);
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_named_null(self.0, n.as_ptr()) };
    }
    pub fn str(&mut self, v: &str) {
        let s = cstring(v);
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_string(self.0, s.as_ptr()) };
    }
    pub fn bool(&mut self, v: bool) {
        // SAFETY: as above.
        unsafe { sys::spdk_json_write_bool(self.0, v) };
    }
}

/// A JSON-RPC request SPDK handed a method handler. It must be answered
/// exactly once: every way of answering consumes it.
pub struct Request(std::ptr::NonNull<sys::spdk_jsonrpc_request>);

// SAFETY: a Request is only a handle; it is answered on the SPDK thread that
// keeps it (the app thread, where methods run and pcache's pollers live).
unsafe impl Send for Request {}

impl Request {
    /// # Safety
    /// `req` is a request SPDK passed to a method handler and not answered
    /// yet; from now on it is answered only through the returned value.
    pub unsafe fn from_raw(req: *mut sys::spdk_jsonrpc_request) -> Option<Request> {
        std::ptr::NonNull::new(req).map(Request)
    }

    /// Answers with the result written by `f`.
    pub fn respond(self, f: impl FnOnce(&mut Writer)) {
        // SAFETY: a live, unanswered request (see from_raw); begin/end pair up.
        unsafe {
            let w = sys::spdk_jsonrpc_begin_result(self.0.as_ptr());
            let mut wr = Writer::new(w);
            f(&mut wr);
            sys::spdk_jsonrpc_end_result(self.0.as_ptr(), w);
        }
    }

    pub fn respond_bool(self, v: bool) {
        self.respond(|w| w.bool(v));
    }

    pub fn respond_error(self, code: i32, msg: &str) {
        let m = cstring(msg);
        // SAFETY: a live, unanswered request; SPDK copies the message.
        unsafe { sys::spdk_jsonrpc_send_error_response(self.0.as_ptr(), code, m.as_ptr()) };
    }
}
