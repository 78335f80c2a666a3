//! The `ctx` command: sends its arguments to the operation's proxy and prints the answer the
//! way Cloudify's ctx client does (strings raw, other values as JSON, no trailing newline;
//! `-j` prints JSON always). Options as Cloudify's: `-t/--timeout SECONDS`, `--socket-url URL`,
//! `--json-arg-prefix P` (default `@`: `@VALUE` is a JSON argument), `-j/--json-output`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use super::protocol::{CTX_SOCKET_URL, CtxRequest, CtxResponse, UNIX_SCHEME};
use super::state::display;

/// Parsed command line of `ctx`.
#[derive(Debug, PartialEq)]
struct Options {
    timeout: Duration,
    socket_url: Option<String>,
    json_output: bool,
    request: CtxRequest,
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut timeout = Duration::from_secs(30);
    let mut socket_url = std::env::var(CTX_SOCKET_URL).ok();
    let mut prefix = "@".to_string();
    let mut json_output = false;
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    let mut options_ended = false;
    while let Some(arg) = it.next() {
        if options_ended {
            positional.push(arg);
            continue;
        }
        let mut option_value =
            |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--" => options_ended = true,
            "-j" | "--json-output" => json_output = true,
            "-t" | "--timeout" => {
                let value = option_value(&arg)?;
                let seconds: u64 = value
                    .parse()
                    .map_err(|_| format!("--timeout needs whole seconds, got {value:?}"))?;
                timeout = Duration::from_secs(seconds.max(1));
            }
            "--socket-url" => socket_url = Some(option_value(&arg)?),
            "--json-arg-prefix" => prefix = option_value(&arg)?,
            _ => positional.push(arg),
        }
    }
    let mut request = CtxRequest {
        args: Vec::with_capacity(positional.len()),
        json_args: Vec::new(),
    };
    for (i, arg) in positional.into_iter().enumerate() {
        match arg
            .strip_prefix(prefix.as_str())
            .filter(|_| !prefix.is_empty())
        {
            Some(json) => {
                let value: Value = serde_json::from_str(json)
                    .map_err(|e| format!("argument {arg:?} is not valid JSON: {e}"))?;
                request.args.push(value);
                request.json_args.push(i);
            }
            None => request.args.push(Value::String(arg)),
        }
    }
    Ok(Options {
        timeout,
        socket_url,
        json_output,
        request,
    })
}

fn call(options: &Options) -> Result<CtxResponse, String> {
    let url = options
        .socket_url
        .as_deref()
        .ok_or_else(|| format!("{CTX_SOCKET_URL} is not set: ctx runs only inside an operation"))?;
    let path = url.strip_prefix(UNIX_SCHEME).ok_or_else(|| {
        format!("unsupported {CTX_SOCKET_URL} {url:?}: expected {UNIX_SCHEME}PATH")
    })?;
    let io_error = |e: std::io::Error| format!("cannot reach the ctx proxy at {path}: {e}");
    let mut stream = UnixStream::connect(path).map_err(io_error)?;
    stream
        .set_read_timeout(Some(options.timeout))
        .map_err(io_error)?;
    stream
        .set_write_timeout(Some(options.timeout))
        .map_err(io_error)?;
    let body = serde_json::to_vec(&options.request).map_err(|e| e.to_string())?;
    stream.write_all(&body).map_err(io_error)?;
    stream.shutdown(Shutdown::Write).map_err(io_error)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(io_error)?;
    serde_json::from_slice(&reply).map_err(|e| format!("malformed reply from the ctx proxy: {e}"))
}

/// Runs `ctx` with `args` (without argv[0]) and returns its exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let args: Result<Vec<String>, _> = args.into_iter().map(OsString::into_string).collect();
    let Ok(args) = args else {
        eprintln!("ctx: arguments must be UTF-8");
        return 2;
    };
    let options = match parse(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("ctx: {message}");
            return 2;
        }
    };
    match call(&options) {
        Ok(CtxResponse::Result(value)) => {
            let text = match (&value, options.json_output) {
                (_, true) => value.to_string(),
                (Value::Null, false) => String::new(),
                (_, false) => display(&value),
            };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            0
        }
        Ok(CtxResponse::StopOperation { message }) => {
            eprintln!("{message}");
            1
        }
        Ok(CtxResponse::Error { message }) | Err(message) => {
            eprintln!("ctx: {message}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_anywhere_and_json_arguments() {
        let o = parse(strings(&[
            "-j",
            "instance",
            "runtime-properties",
            "k",
            "@{\"a\": 1}",
            "--socket-url",
            "unix:///s",
        ]))
        .unwrap();
        assert!(o.json_output);
        assert_eq!(o.socket_url.as_deref(), Some("unix:///s"));
        assert_eq!(
            o.request.args,
            vec![
                json!("instance"),
                json!("runtime-properties"),
                json!("k"),
                json!({"a": 1})
            ]
        );
        assert_eq!(o.request.json_args, vec![3]);
    }

    #[test]
    fn double_dash_ends_options_and_bad_json_is_an_error() {
        let o = parse(strings(&[
            "--socket-url",
            "unix:///s",
            "logger",
            "info",
            "--",
            "-j",
        ]))
        .unwrap();
        assert!(!o.json_output);
        assert_eq!(
            o.request.args,
            vec![json!("logger"), json!("info"), json!("-j")]
        );
        assert!(parse(strings(&["returns", "@{nope"])).is_err());
        assert!(parse(strings(&["-t"])).is_err());
    }
}
