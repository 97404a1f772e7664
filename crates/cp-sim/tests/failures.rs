//! A rank that dies or never answers ends the others with an error in bounded time, and bad
//! configurations are refused with a clear message.

use std::time::{Duration, Instant};

use candle_core::DType;
use cp_ring::{Algorithm, RingTransport};
use cp_shard::NewTokens;
use cp_sim::{Session, SimConfig, SimError, TransportError, run_ranks};

#[test]
fn a_rank_that_dies_ends_its_peers_quickly() {
    let started = Instant::now();
    let results = run_ranks::<u32, (), _>(4, Duration::from_secs(30), |mut comm| {
        if comm.rank() == 2 {
            panic!("rank 2 dies on purpose");
        }
        for _ in 0..3 {
            comm.start_shift(&[comm.rank() as u32]).map_err(|e| SimError::Config(e.to_string()))?;
            comm.finish_shift().map_err(|e| SimError::Config(e.to_string()))?;
        }
        Ok(())
    });
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(&results[2], Err(SimError::RankPanicked { rank: 2, .. })), "{:?}", results[2]);
    // Rank 3 waits on rank 2 and must name it.
    let err = results[3].as_ref().unwrap_err().to_string();
    assert!(err.contains("peer rank 2 is gone"), "{err}");
}

#[test]
fn a_silent_peer_times_out() {
    let started = Instant::now();
    let results = run_ranks::<u32, (), _>(2, Duration::from_millis(200), |mut comm| {
        if comm.rank() == 0 {
            // Never sends; stays alive past the peer's timeout.
            std::thread::sleep(Duration::from_millis(600));
            return Ok(());
        }
        comm.start_shift(&[1]).map_err(|e| SimError::Config(e.to_string()))?;
        comm.finish_shift().map(|_| ()).map_err(|e| SimError::Config(e.to_string()))
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("no ring shift message from peer rank 0 within"), "{err}");
}

#[test]
fn transport_misuse_is_an_error() {
    let mut ring = cp_sim::channel_ring::<u8>(2, Duration::from_millis(10));
    let comm = &mut ring[0];
    assert!(matches!(comm.finish_shift(), Err(TransportError::Misuse { .. })));
    assert!(matches!(comm.all_to_all(vec![vec![1]]), Err(TransportError::Misuse { .. })));
    comm.start_shift(&[1]).unwrap();
    assert!(matches!(comm.start_shift(&[2]), Err(TransportError::Misuse { .. })));
}

#[test]
fn bad_configurations_are_refused() {
    let base = SimConfig::default();
    let cases = [
        (SimConfig { world_size: 0, ..base }, "world size must be at least 1"),
        (SimConfig { n_heads: 6, n_kv_heads: 4, ..base }, "n_heads (6) must be a multiple of n_kv_heads (4)"),
        (SimConfig { head_dim: 0, ..base }, "head dim must be at least 1"),
        (SimConfig { dtype: DType::U8, ..base }, "dtype U8 is not supported"),
    ];
    for (cfg, want) in cases {
        let err = Session::new(cfg, 1).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should contain {want}");
    }
    let mut session = Session::new(base, 1).unwrap();
    let err = session.prefill(&[NewTokens { seq: 3, count: 4 }], &[Algorithm::PassKv]).unwrap_err();
    assert!(err.to_string().contains("sequence id 3 is out of range"), "{err}");
    let err = session.decode(&[]).unwrap_err();
    assert!(err.to_string().contains("batch is empty"), "{err}");
}
