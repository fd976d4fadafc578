//! The HTTP and gRPC clients of the live Engram sink, called directly against the stand-in: outcomes per memory,
//! retries of injected faults, rejections, the per-space limit, the unary fallback, refused keys, unreachable servers.

use crate::engram_standin::{Config, Standin};
use engram_migrate::sink::engram::{grpc::GrpcApi, http::HttpApi, Backoff, Memory, Outcome};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn unit(seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..768)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}
fn mem(id: &str, e: Vec<f32>) -> Memory {
    Memory {
        id: id.into(),
        content: format!("c {id}"),
        embedding: e,
        confidence: 0.7,
        created_at: Some(1_700_000_000_000_000),
        memory_type: "semantic".into(),
    }
}
fn quick() -> Backoff {
    Backoff {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    }
}

#[test]
fn http_and_grpc_against_standin() {
    let s = Standin::start(Config {
        space_limit: 5,
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = HttpApi::new(
            &format!("http://{}", s.http),
            None,
            Duration::from_secs(10),
            quick(),
        )
        .unwrap();
        http.check_reachable().await.unwrap();
        http.ensure_spaces(&["aaa".to_string()]).await.unwrap();
        let a = unit(1);
        let mut big = mem("big", unit(3));
        big.content = "x".repeat(200_000);
        let mems = vec![
            mem("m1", a.clone()),
            mem("m1dup", a.clone()),
            mem("m2", unit(2)),
            big,
        ];
        s.state.config.fail_next.store(2, Ordering::SeqCst);
        let out = http.remember_batch("aaa", mems.clone(), 4).await.unwrap();
        println!("{out:?}");
        assert!(matches!(out[0], Outcome::Accepted(_)));
        assert!(matches!(out[1], Outcome::Accepted(_)));
        assert!(matches!(out[2], Outcome::Accepted(_)), "{out:?}");
        assert!(matches!(&out[3], Outcome::Rejected{status, ..} if status.contains("400")));
        let (listed, total) = http.list("aaa").await.unwrap();
        let ids: Vec<_> = listed.iter().map(|l| l.id.clone()).collect();
        println!("{ids:?} {total:?}");
        // m2, and one of the two near-duplicates (which one depends on arrival order).
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"m2".to_string()), "{ids:?}");
        assert_eq!(
            ids.iter().filter(|i| *i == "m1" || *i == "m1dup").count(),
            1,
            "{ids:?}"
        );
        assert_eq!(listed[0].embedding.as_ref().unwrap().len(), 768);
        assert_eq!(http.counts().await.unwrap()["aaa"], 2);

        let g = GrpcApi::connect(&s.grpc.to_string(), None, Duration::from_secs(10), quick())
            .await
            .unwrap();
        let mems: Vec<Memory> = (10..20)
            .map(|i| mem(&format!("g{i}"), unit(i)))
            .chain([mem("gdup", unit(11)), big_one()])
            .collect();
        s.state.config.fail_next.store(1, Ordering::SeqCst);
        let out = g.remember_batch("bbb", mems, 3).await.unwrap();
        println!("{out:?}");
        assert_eq!(out.len(), 12);
        assert!(
            matches!(&out[11], Outcome::Rejected{status, ..} if status.contains("InvalidArgument"))
        );
        assert_eq!(s.state.ids("bbb").len(), 5, "limit 5");
        s.state.config.streaming.store(false, Ordering::SeqCst);
        let out = g
            .remember_batch("ccc", vec![mem("u1", unit(50)), mem("u2", unit(51))], 2)
            .await
            .unwrap();
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Accepted(_))),
            "{out:?}"
        );
        let mut ids = s.state.ids("ccc");
        ids.sort();
        assert_eq!(ids, ["u1", "u2"], "the unary fallback sent both");
    });
    let t = Standin::start(Config {
        token: Some("engram_key_a_s3cret".into()),
        ..Default::default()
    });
    rt.block_on(async {
        let http = HttpApi::new(
            &format!("http://{}", t.http),
            Some("wrong".into()),
            Duration::from_secs(10),
            quick(),
        )
        .unwrap();
        http.check_reachable().await.unwrap();
        let e = http
            .ensure_spaces(&["aaa".to_string()])
            .await
            .unwrap_err()
            .to_string();
        println!("{e}");
        assert!(e.contains("refused the credentials"));
        let g = GrpcApi::connect(
            &t.grpc.to_string(),
            Some("wrong"),
            Duration::from_secs(10),
            quick(),
        )
        .await
        .unwrap();
        let e = g
            .remember_batch("bbb", vec![mem("x", unit(1))], 1)
            .await
            .unwrap_err()
            .to_string();
        println!("{e}");
        assert!(e.contains("refused the credentials"));
        let g = GrpcApi::connect(
            &t.grpc.to_string(),
            Some("engram_key_a_s3cret"),
            Duration::from_secs(10),
            quick(),
        )
        .await
        .unwrap();
        assert_eq!(
            g.remember_batch("bbb", vec![mem("x", unit(1))], 1)
                .await
                .unwrap()
                .len(),
            1
        );
        let dead =
            HttpApi::new("http://127.0.0.1:9", None, Duration::from_secs(2), quick()).unwrap();
        let e = dead.check_reachable().await.unwrap_err().to_string();
        println!("{e}");
        assert!(e.contains("check that Engram is running"));
        let e = GrpcApi::connect("127.0.0.1:9", None, Duration::from_secs(2), quick())
            .await
            .err()
            .unwrap()
            .to_string();
        println!("{e}");
        assert!(
            e.contains("cannot connect after") && e.contains("check that Engram is running"),
            "{e}"
        );
    });
}
fn big_one() -> Memory {
    let mut b = mem("gbig", unit(99));
    b.content = "y".repeat(200_000);
    b
}

/// A server (or a proxy in front of it) that sheds load answers 429 / ResourceExhausted: the memory was not
/// refused, so it is sent again after a backoff and kept, over HTTP, gRPC streaming and unary gRPC alike.
#[test]
fn rate_limited_answers_are_retried_not_rejected() {
    let s = Standin::start(Config::default());
    s.state.config.rate_limited.store(true, Ordering::SeqCst);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = HttpApi::new(
            &format!("http://{}", s.http),
            None,
            Duration::from_secs(10),
            quick(),
        )
        .unwrap();
        http.ensure_spaces(&["rate_http".to_string()])
            .await
            .unwrap();
        let mems: Vec<Memory> = (100..110).map(|i| mem(&format!("h{i}"), unit(i))).collect();
        s.state.config.fail_next.store(2, Ordering::SeqCst);
        let out = http.remember_batch("rate_http", mems, 2).await.unwrap();
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Accepted(_))),
            "{out:?}"
        );
        assert_eq!(s.state.ids("rate_http").len(), 10);
        assert_eq!(
            s.state.config.fail_next.load(Ordering::SeqCst),
            0,
            "the faults were injected"
        );

        let g = GrpcApi::connect(&s.grpc.to_string(), None, Duration::from_secs(10), quick())
            .await
            .unwrap();
        for (space, streaming) in [("rate_stream", true), ("rate_unary", false)] {
            s.state.config.streaming.store(streaming, Ordering::SeqCst);
            let mems: Vec<Memory> = (200..210).map(|i| mem(&format!("g{i}"), unit(i))).collect();
            s.state.config.fail_next.store(2, Ordering::SeqCst);
            let out = g.remember_batch(space, mems, 3).await.unwrap();
            assert!(
                out.iter().all(|o| matches!(o, Outcome::Accepted(_))),
                "{space}: {out:?}"
            );
            assert_eq!(s.state.ids(space).len(), 10, "{space}");
            assert_eq!(
                s.state.config.fail_next.load(Ordering::SeqCst),
                0,
                "{space}: the faults were injected"
            );
        }
    });
}
