//! Bootstrap for one process per GPU, in torchrun's convention: rank 0 listens on
//! `MASTER_ADDR:MASTER_PORT` and hands a payload (the NCCL unique id) to every other rank once
//! all have joined. Every wait has a deadline (a joining rank listens for rank 0's verdict a
//! short grace past it): a rank that never joins, a rank 0 that never
//! answers or dies, a duplicate rank or a mismatched world size ends every rank with an error
//! that says which.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MAGIC: &str = "cp-rs-rendezvous 1";

/// How long rank 0 waits for a connection's hello line. Connections are served concurrently,
/// each with this deadline, so an idle or hostile connection to the port delays nobody.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest `WORLD_SIZE` accepted (rank 0 keeps a connection per rank).
pub const MAX_WORLD_SIZE: usize = 1 << 16;

/// The deadline of `cp-rendezvous` and `cp-ring-bench nccl-process` from
/// `CP_RENDEZVOUS_TIMEOUT_MS` (milliseconds, at least 1), else `default`; a value that is not a
/// positive integer is an error, not the default.
pub fn timeout_from_env(default: Duration) -> Result<Duration> {
    const VAR: &str = "CP_RENDEZVOUS_TIMEOUT_MS";
    match std::env::var(VAR) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(RendezvousError::Env { var: VAR, reason: "is not valid Unicode".into() })
        }
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(RendezvousError::Env {
                var: VAR,
                reason: format!("{v:?} is not a positive number of milliseconds"),
            }),
        },
    }
}

/// How long past the shared deadline a joining rank keeps listening for rank 0's verdict. Rank 0
/// decides when a rendezvous has failed (and names the missing ranks); its process may have
/// started later than this one, so its deadline can fall a little after ours.
const VERDICT_GRACE: Duration = Duration::from_secs(2);

/// Why a rendezvous failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RendezvousError {
    /// A missing or malformed environment variable.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The environment variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
    /// The deadline passed.
    #[error("rank {rank}: {what} (waited {waited:?})")]
    Timeout {
        /// The rank.
        rank: usize,
        /// What it concerns.
        what: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Rank 0 refused this rank or gave up.
    #[error("rank {rank}: rank 0 says: {reason}")]
    Refused {
        /// The rank.
        rank: usize,
        /// Why.
        reason: String,
    },
    /// A socket operation failed.
    #[error("rank {rank}: {op} {addr}: {source}")]
    Io {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A peer spoke something other than this protocol.
    #[error("rank {rank}: unexpected message {message:?}")]
    Protocol {
        /// The rank.
        rank: usize,
        /// The panic message.
        message: String,
    },
}

/// Who this process is in the job, and where rank 0 listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of ranks (`WORLD_SIZE`).
    pub world_size: usize,
    /// GPU of this process on its node (`LOCAL_RANK`, default `RANK`).
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT`.
    pub master: String,
    /// The deadline for the whole exchange.
    pub timeout: Duration,
}

type Result<T, E = RendezvousError> = std::result::Result<T, E>;

fn env_usize(var: &'static str) -> Result<usize> {
    let v = std::env::var(var).map_err(|_| RendezvousError::Env { var, reason: "not set".into() })?;
    v.trim().parse().map_err(|_| RendezvousError::Env { var, reason: format!("{v:?} is not a non-negative integer") })
}

impl Rendezvous {
    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (optional), `MASTER_ADDR`, `MASTER_PORT`.
    pub fn from_env(timeout: Duration) -> Result<Rendezvous> {
        let rank = env_usize("RANK")?;
        let world_size = env_usize("WORLD_SIZE")?;
        let local_rank = if std::env::var_os("LOCAL_RANK").is_some() { env_usize("LOCAL_RANK")? } else { rank };
        let addr = std::env::var("MASTER_ADDR")
            .map_err(|_| RendezvousError::Env { var: "MASTER_ADDR", reason: "not set".into() })?;
        let port = env_usize("MASTER_PORT")?;
        if port == 0 || port > 65535 {
            return Err(RendezvousError::Env { var: "MASTER_PORT", reason: format!("{port} is not a TCP port") });
        }
        let r = Rendezvous { rank, world_size, local_rank, master: format!("{addr}:{port}"), timeout };
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(RendezvousError::Env { var: "WORLD_SIZE", reason: "must be at least 1".into() });
        }
        if self.world_size > MAX_WORLD_SIZE {
            return Err(RendezvousError::Env {
                var: "WORLD_SIZE",
                reason: format!(
                    "{} is more ranks than the rendezvous serves (at most {MAX_WORLD_SIZE})",
                    self.world_size
                ),
            });
        }
        if self.rank >= self.world_size {
            return Err(RendezvousError::Env {
                var: "RANK",
                reason: format!("{} is out of range for WORLD_SIZE {}", self.rank, self.world_size),
            });
        }
        Ok(())
    }

    /// Rank 0 computes the payload with `make` and hands it to every rank; every rank returns
    /// it. Returns only once all `world_size` ranks have joined, or fails by the deadline.
    pub fn share(&self, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        self.validate()?;
        if self.rank == 0 { self.serve(make()) } else { self.join() }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> RendezvousError + '_ {
        move |source| RendezvousError::Io { rank: self.rank, op, addr: self.master.clone(), source }
    }

    fn serve(&self, payload: Vec<u8>) -> Result<Vec<u8>> {
        let started = Instant::now();
        let listener = TcpListener::bind(&self.master).map_err(self.io("bind"))?;
        listener.set_nonblocking(true).map_err(self.io("set_nonblocking"))?;
        let mut joined: Vec<Option<TcpStream>> = (0..self.world_size).map(|_| None).collect();
        let mut waiting = self.world_size - 1;
        // Each connection's hello is read on a thread of its own with its own deadline, so a
        // connection that never speaks (an idle client, a port scanner) blocks nobody.
        let (hellos, arrived) = mpsc::channel::<(TcpStream, std::io::Result<String>)>();
        while waiting > 0 {
            if started.elapsed() > self.timeout {
                let missing: Vec<usize> = (1..self.world_size).filter(|&r| joined[r].is_none()).collect();
                let why = format!("rank(s) {missing:?} never joined within {:?}", self.timeout);
                for s in joined.iter_mut().flatten() {
                    let _ = writeln!(s, "ERR {why}");
                }
                return Err(RendezvousError::Timeout { rank: 0, what: why, waited: started.elapsed() });
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    let left =
                        self.timeout.saturating_sub(started.elapsed()).clamp(Duration::from_millis(1), HELLO_TIMEOUT);
                    let tx = hellos.clone();
                    std::thread::spawn(move || {
                        let read = (|| {
                            stream.set_nonblocking(false)?;
                            stream.set_read_timeout(Some(left))?;
                            let mut line = String::new();
                            BufReader::new(&stream).take(4096).read_line(&mut line)?;
                            Ok(line)
                        })();
                        let _ = tx.send((stream, read));
                    });
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.io("accept")(e)),
            }
            match arrived.recv_timeout(Duration::from_millis(5)) {
                Ok((mut stream, Ok(line))) => match self.parse_hello(&line) {
                    Ok(r) if joined[r].is_none() => {
                        joined[r] = Some(stream);
                        waiting -= 1;
                    }
                    Ok(r) => {
                        let _ = writeln!(stream, "ERR rank {r} already joined");
                    }
                    Err(reason) => {
                        let _ = writeln!(stream, "ERR {reason}");
                    }
                },
                // A silent or broken connection: not a rank; keep waiting for the real ones. (The
                // channel cannot disconnect: this loop holds a sender.)
                Ok((_, Err(_))) | Err(_) => {}
            }
        }
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        for s in joined.iter_mut().flatten() {
            writeln!(s, "OK {hex}").map_err(self.io("write"))?;
        }
        Ok(payload)
    }

    fn parse_hello(&self, line: &str) -> Result<usize, String> {
        let rest =
            line.trim().strip_prefix(MAGIC).ok_or_else(|| format!("not a rendezvous hello: {:?}", line.trim()))?;
        let mut rank = None;
        let mut world = None;
        for field in rest.split_whitespace() {
            match field.split_once('=') {
                Some(("rank", v)) => rank = v.parse::<usize>().ok(),
                Some(("world", v)) => world = v.parse::<usize>().ok(),
                _ => {}
            }
        }
        let (rank, world) = rank.zip(world).ok_or_else(|| format!("malformed hello {:?}", line.trim()))?;
        if world != self.world_size {
            return Err(format!("rank {rank} says WORLD_SIZE {world}, rank 0 has {}", self.world_size));
        }
        if rank == 0 || rank >= self.world_size {
            return Err(format!("rank {rank} is not a valid non-zero rank for WORLD_SIZE {world}"));
        }
        Ok(rank)
    }

    fn join(&self) -> Result<Vec<u8>> {
        let started = Instant::now();
        let addrs: Vec<_> = self.master.to_socket_addrs().map_err(self.io("resolve"))?.collect();
        let mut stream = loop {
            let attempt = addrs.iter().find_map(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).ok());
            if let Some(s) = attempt {
                break s;
            }
            if started.elapsed() > self.timeout {
                return Err(RendezvousError::Timeout {
                    rank: self.rank,
                    what: format!("could not reach rank 0 at {}", self.master),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        writeln!(stream, "{MAGIC} rank={} world={}", self.rank, self.world_size).map_err(self.io("write"))?;
        let left = (self.timeout + VERDICT_GRACE).saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).map_err(self.io("set_read_timeout"))?;
        let mut line = String::new();
        match BufReader::new(&stream).read_line(&mut line) {
            Ok(0) => {
                return Err(RendezvousError::Refused {
                    rank: self.rank,
                    reason: "closed the connection without an answer".into(),
                });
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(RendezvousError::Timeout {
                    rank: self.rank,
                    what: "no answer from rank 0 (waiting for other ranks?)".into(),
                    waited: started.elapsed(),
                });
            }
            Err(e) => return Err(self.io("read")(e)),
        }
        let line = line.trim();
        if let Some(reason) = line.strip_prefix("ERR ") {
            return Err(RendezvousError::Refused { rank: self.rank, reason: reason.into() });
        }
        let hex = line
            .strip_prefix("OK ")
            .ok_or_else(|| RendezvousError::Protocol { rank: self.rank, message: line.into() })?;
        (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| RendezvousError::Protocol { rank: self.rank, message: line.into() })
    }
}
