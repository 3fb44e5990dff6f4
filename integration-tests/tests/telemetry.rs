//! OpenTelemetry traces at a real OTLP/gRPC receiver (opentelemetry-proto's TraceService
//! server, in this test process): one `fleetctl rollout start` is one trace across fleetctl,
//! the coordinator and both agents, every span's parent in the same trace; with no endpoint
//! configured, no exporter thread runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, app_release, app_service, eventually, free_port, serial};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// One exported span: (service.name, service.instance.id, name, trace id, span id, parent id).
#[derive(Debug, Clone)]
struct Got {
    service: String,
    instance: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in r.into_inner().resource_spans {
            let attr =
                |key: &str| {
                    rs.resource.as_ref().and_then(|res| res.attributes.iter().find(|a| a.key == key)).and_then(|a| {
                        match a.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        }
                    })
                };
            let (service, instance) =
                (attr("service.name").unwrap_or_default(), attr("service.instance.id").unwrap_or_default());
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        instance: instance.clone(),
                        name: s.name.clone(),
                        trace: s.trace_id.clone(),
                        id: s.span_id.clone(),
                        parent: s.parent_span_id.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn receiver() -> (String, Sink) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sink = Sink::default();
    let s = sink.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(s))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    (format!("http://{addr}"), sink)
}

/// Threads of process `pid` by name.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_rollout_is_one_trace_across_fleetctl_the_coordinator_and_both_agents() {
    let _g = serial().await;
    let (endpoint, sink) = receiver().await;
    let telemetry = format!("\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n");
    let hosts = ["main-pc", "pc2"];
    let mut c = Cluster::new(&hosts);
    c.start_coordinator(CoordinatorOpts { extra: telemetry.clone(), ..Default::default() }).await;
    for h in hosts {
        let svc = app_service(&c.dir().join(h).join("app"), free_port(), &c.dir().join(h).join("conf"), "");
        c.start_agent_with(h, Duration::from_millis(500), &(svc + &telemetry));
    }
    c.wait_online(&hosts, Duration::from_secs(15)).await;
    for h in hosts {
        c.wait_service(h, "app", Duration::from_secs(10), "reported", |_| true).await;
    }
    let artifact = c.dir().join("app-1.0.tar.gz");
    app_release(&artifact, "1.0", false);
    let out = c.fleetctl_env(
        &[
            "rollout",
            "start",
            "app",
            "--artifact",
            artifact.to_str().unwrap(),
            "--version",
            "1.0",
            "--min-healthy-time",
            "1s",
            "--healthy-deadline",
            "20s",
            "--watch",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let spans = eventually(Duration::from_secs(30), "the rollout's spans from every process", || async {
        let got = sink.0.lock().unwrap().clone();
        let root = got.iter().find(|s| s.service == "fleetctl" && s.name == "rollout start" && s.parent.is_empty())?;
        let trace: Vec<Got> = got.iter().filter(|s| s.trace == root.trace).cloned().collect();
        let on = |host: &str, name: &str| {
            trace.iter().any(|s| s.service == "fleet-agent" && s.instance == host && s.name == name)
        };
        (on("main-pc", "deploy.probation") && on("pc2", "deploy.probation")).then_some(trace)
    })
    .await;
    let by_id = |id: &[u8]| spans.iter().find(|s| s.id == id);
    let root = spans.iter().find(|s| s.parent.is_empty()).unwrap();
    assert_eq!(spans.iter().filter(|s| s.parent.is_empty()).count(), 1, "one root: {spans:#?}");
    for s in &spans {
        assert!(
            s.parent.is_empty() || by_id(&s.parent).is_some(),
            "{} of {} has its parent outside the trace",
            s.name,
            s.service
        );
    }
    let start = spans
        .iter()
        .find(|s| s.service == "fleet-coordinator" && s.name.ends_with("ControlService/StartRollout"))
        .unwrap();
    assert_eq!(start.parent, root.id, "StartRollout is a child of fleetctl's command");
    for h in hosts {
        let cmd =
            spans.iter().find(|s| s.service == "fleet-agent" && s.instance == h && s.name == "agent.command").unwrap();
        let deliver = by_id(&cmd.parent).unwrap();
        assert_eq!((deliver.service.as_str(), deliver.name.as_str()), ("fleet-coordinator", "command.deliver"), "{h}");
    }

    // Without an endpoint: no exporter thread.
    let mut quiet = Cluster::new(&["pc2"]);
    quiet.start_coordinator(CoordinatorOpts::default()).await;
    let pid = quiet.coordinator.as_ref().unwrap().child.id();
    assert!(
        !threads(pid).iter().any(|t| t.starts_with("fleet-otel") || t.contains("BatchProcessor")),
        "{:?}",
        threads(pid)
    );
    let pid = c.coordinator.as_ref().unwrap().child.id();
    assert!(threads(pid).iter().any(|t| t.starts_with("fleet-otel")), "{:?}", threads(pid));
}
