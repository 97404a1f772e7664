//! `cp-rendezvous`: checks that the ranks of a job can find each other, in torchrun's
//! convention (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`). Rank 0 hands a
//! random 128-byte token (the size of an NCCL unique id) to every rank; each prints it in hex.
//! `CP_RENDEZVOUS_TIMEOUT_MS` sets the deadline (default 30000). Exit status 1 on any failure,
//! with a message naming what failed.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use cp_nccl::Rendezvous;

fn main() -> ExitCode {
    let result =
        cp_nccl::rendezvous_timeout_from_env(Duration::from_secs(30)).and_then(Rendezvous::from_env).and_then(|r| {
            r.share(|| {
                let seed =
                    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
                let mut x = seed ^ u64::from(std::process::id());
                (0..128)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
        });
    match result {
        Ok(payload) => {
            println!("{}", payload.iter().map(|b| format!("{b:02x}")).collect::<String>());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
