//! A tiny synchronous RESP2 client: one TCP connection per command, enough for tests to poke a
//! Redis directly (`SET`, `GET`, `INFO`, `SHUTDOWN`) without an async runtime.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::Error;

/// How long one command may take end to end.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Nesting limit for array replies; tests never need more, and it bounds recursion.
const MAX_DEPTH: usize = 8;

/// A Redis reply, as [`RedisServer::query`](crate::RedisServer::query) returns it.
///
/// Error replies are not a variant: they come back as an [`Error`] (see
/// [`Error::is_redis_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A nil bulk string or nil array (`GET` of a missing key).
    Nil,
    /// A simple string such as `OK` or `PONG`.
    Status(String),
    /// An integer reply.
    Integer(i64),
    /// A bulk string (decoded as UTF-8, invalid bytes replaced).
    Bulk(String),
    /// An array reply.
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as text: strings as they are, integers in decimal, nil as the empty string and
    /// arrays one element per line.
    #[must_use]
    pub fn to_text(&self) -> String {
        match self {
            Self::Nil => String::new(),
            Self::Status(text) | Self::Bulk(text) => text.clone(),
            Self::Integer(value) => value.to_string(),
            Self::Array(items) => items
                .iter()
                .map(Self::to_text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Sends `args` as one command to `127.0.0.1:port` and reads the reply.
pub(crate) fn request(port: u16, args: &[&str]) -> Result<Reply, Error> {
    request_within(port, args, TIMEOUT)
}

/// [`request`] with its own connect, read and write timeout.
pub(crate) fn request_within(port: u16, args: &[&str], timeout: Duration) -> Result<Reply, Error> {
    Connection::open_within(port, timeout)?.request(args)
}

/// One connection kept open for many commands, for operations that send hundreds of them
/// (moving slots between cluster nodes), where a connection per command would dominate.
pub(crate) struct Connection {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `127.0.0.1:port` with the default 5 s timeout per command.
    pub(crate) fn open(port: u16) -> Result<Self, Error> {
        Self::open_within(port, TIMEOUT)
    }

    fn open_within(port: u16, timeout: Duration) -> Result<Self, Error> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let io = |source| {
            Error::io(
                format_args!("connecting to redis {addr}"),
                "check that the server is running",
                source,
            )
        };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Self {
            port,
            reader: BufReader::new(stream),
        })
    }

    /// Sends `args` as one command and reads its reply.
    pub(crate) fn request(&mut self, args: &[&str]) -> Result<Reply, Error> {
        let port = self.port;
        let what = || format!("redis 127.0.0.1:{port} `{}`", args.join(" "));
        let io = |source| Error::io(what(), "check that the server is running", source);
        self.reader.get_mut().write_all(&encode(args)).map_err(io)?;
        match read_reply(&mut self.reader, 0) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(ReadError::Server(message))) => Err(Error::redis_reply(what(), &message)),
            Ok(Err(ReadError::Malformed(detail))) => {
                Err(Error::protocol(format_args!("{}: {detail}", what())))
            }
            Err(source) => Err(io(source)),
        }
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n{arg}\r\n", arg.len());
    }
    out.into_bytes()
}

enum ReadError {
    Server(String),
    Malformed(String),
}

fn read_reply(
    reader: &mut impl BufRead,
    depth: usize,
) -> std::io::Result<Result<Reply, ReadError>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let mut chars = line.chars();
    let kind = chars.next();
    let rest = chars.as_str();
    let malformed = || {
        Ok(Err(ReadError::Malformed(format!(
            "unexpected line {line:?}"
        ))))
    };
    Ok(Ok(match kind {
        Some('+') => Reply::Status(rest.to_owned()),
        Some('-') => return Ok(Err(ReadError::Server(rest.to_owned()))),
        Some(':') => match rest.parse() {
            Ok(value) => Reply::Integer(value),
            Err(_) => return malformed(),
        },
        Some('$') => match rest.parse::<i64>() {
            Ok(-1) => Reply::Nil,
            Ok(len) => {
                // Redis caps bulk strings at 512 MB; refuse more rather than allocate it.
                let Some(len) = usize::try_from(len).ok().filter(|len| *len <= 512 << 20) else {
                    return malformed();
                };
                // The payload plus its trailing CRLF.
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Reply::Bulk(String::from_utf8_lossy(&bytes).into_owned())
            }
            Err(_) => return malformed(),
        },
        Some('*') => match rest.parse::<i64>() {
            Ok(-1) => Reply::Nil,
            Ok(_) if depth >= MAX_DEPTH => return malformed(),
            Ok(count) => {
                let Ok(count) = usize::try_from(count) else {
                    return malformed();
                };
                let mut items = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    match read_reply(reader, depth + 1)? {
                        Ok(item) => items.push(item),
                        Err(error) => return Ok(Err(error)),
                    }
                }
                Reply::Array(items)
            }
            Err(_) => return malformed(),
        },
        _ => return malformed(),
    }))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn parse(bytes: &str) -> Result<Reply, String> {
        match read_reply(&mut bytes.as_bytes(), 0) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(ReadError::Server(message))) => Err(format!("server: {message}")),
            Ok(Err(ReadError::Malformed(detail))) => Err(format!("malformed: {detail}")),
            Err(error) => Err(format!("io: {error}")),
        }
    }

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        assert_eq!(
            encode(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(parse("+OK\r\n"), Ok(Reply::Status("OK".into())));
        assert_eq!(parse(":-42\r\n"), Ok(Reply::Integer(-42)));
        assert_eq!(parse("$-1\r\n"), Ok(Reply::Nil));
        assert_eq!(
            parse("$5\r\na\r\nbc\r\n"),
            Ok(Reply::Bulk("a\r\nbc".into()))
        );
        assert_eq!(
            parse("*2\r\n$1\r\nx\r\n*1\r\n:1\r\n"),
            Ok(Reply::Array(vec![
                Reply::Bulk("x".into()),
                Reply::Array(vec![Reply::Integer(1)])
            ]))
        );
        assert_eq!(parse("-ERR wrong\r\n"), Err("server: ERR wrong".into()));
        assert!(parse("?huh\r\n").unwrap_err().starts_with("malformed"));
        assert!(parse("$10\r\nshort\r\n").unwrap_err().starts_with("io"));
        assert!(parse("").unwrap_err().starts_with("io"));
    }

    #[test]
    fn renders_replies_as_text() {
        let reply = Reply::Array(vec![Reply::Nil, Reply::Integer(3), Reply::Bulk("v".into())]);
        assert_eq!(reply.to_text(), "\n3\nv");
    }
}
