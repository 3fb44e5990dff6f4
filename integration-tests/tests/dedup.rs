//! Invariant 2, forced: a report sent again (its Ack was lost, or an agent replays what it
//! holds) is acknowledged, stored once, and counted as a duplicate, also across a coordinator
//! restart. The agent here is a bare gRPC client with pc2's certificate that resends on
//! purpose, which a real agent does only when an Ack is lost.

use std::time::Duration;

use fleet_common::tls::{TlsMaterial, connect_coordinator};
use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, parse_metrics, serial};
use fleet_proto::v1::agent_message::Msg;
use fleet_proto::v1::agent_service_client::AgentServiceClient;
use fleet_proto::v1::coordinator_message::Msg as CoordMsg;
use fleet_proto::v1::{AgentMessage, Hello, Report, ReportId};

/// One session: Hello, then `seqs` of boot 7 in order; returns the acknowledged seqs.
async fn session(c: &Cluster, seqs: &[u64]) -> Vec<u64> {
    let tls = TlsMaterial::load(&c.pki.files("pc2")).unwrap();
    let ch = connect_coordinator(&c.addr, &tls).await.unwrap();
    let now = fleet_common::now_ms();
    let hello = Hello {
        name: "pc2".into(),
        version: "0.1.0".into(),
        boot_id: 7,
        report_interval_ms: 1000,
        ..Default::default()
    };
    let mut msgs = vec![AgentMessage { msg: Some(Msg::Hello(hello)) }];
    for &seq in seqs {
        let r = Report {
            id: Some(ReportId { boot_id: 7, seq }),
            timestamp_ms: now - 1000 + seq as i64,
            ..Default::default()
        };
        msgs.push(AgentMessage { msg: Some(Msg::Report(r)) });
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut inbound =
        AgentServiceClient::new(ch).attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut acked = Vec::new();
    while acked.last() != seqs.last() {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(m))) => {
                if let Some(CoordMsg::Ack(a)) = m.msg {
                    acked.push(a.id.unwrap().seq);
                }
            }
            other => panic!("the session ended before every report was acknowledged: {other:?}"),
        }
    }
    drop(tx);
    acked
}

async fn duplicates(c: &Cluster) -> f64 {
    let (_, text) = c.http_get("/metrics").await;
    parse_metrics(&text).get("fleet_coordinator_reports_duplicate_total").copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_sent_again_is_stored_once_and_counted() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(30), ..Default::default() }).await;
    assert_eq!(session(&c, &[1, 2, 3]).await, [1, 2, 3]);
    assert_eq!(duplicates(&c).await, 0.0);
    // The Acks were "lost": the same reports again, and one more.
    assert_eq!(session(&c, &[2, 3, 4]).await, [2, 3, 4], "duplicates are acknowledged too");
    assert_eq!(duplicates(&c).await, 2.0);
    let seqs = |r: Vec<fleet_proto::v1::StoredReport>| r.into_iter().map(|r| r.id.unwrap().seq).collect::<Vec<_>>();
    assert_eq!(seqs(c.reports("pc2").await), [1, 2, 3, 4]);

    // After a restart the coordinator still knows what it holds.
    c.coordinator.as_mut().unwrap().kill9();
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    assert_eq!(session(&c, &[1, 4, 5]).await, [1, 4, 5]);
    assert_eq!(duplicates(&c).await, 2.0, "counted since this coordinator started");
    let all = eventually(Duration::from_secs(10), "the reports listed after the restart", || async {
        let r = seqs(c.reports("pc2").await);
        (r.len() >= 5).then_some(r)
    })
    .await;
    assert_eq!(all, [1, 2, 3, 4, 5], "each report stored once");
}
