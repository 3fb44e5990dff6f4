//! The ControlService: what fleetctl calls. Every call has passed the operator-only
//! interceptor ([`crate::auth::OperatorOnly`]) before it reaches these handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_proto::v1::control_service_server::ControlService;
use fleet_proto::v1::{
    GetHostRequest, GetHostResponse, GetStatusRequest, GetStatusResponse, ListHostsRequest, ListHostsResponse,
    ListReportsRequest, ListReportsResponse,
};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::registry::{Host, Registry};

/// Most report ids one ListReports answer carries.
pub const MAX_LIST_REPORTS: usize = 100_000;

/// The ControlService implementation.
#[derive(Clone)]
pub struct ControlApi {
    /// Cluster state.
    pub registry: Arc<Registry>,
    /// Self metrics.
    pub metrics: Arc<Metrics>,
    /// Open agent sessions.
    pub sessions: Arc<AtomicUsize>,
    /// When the coordinator started.
    pub started_at_ms: i64,
    /// History retention.
    pub retention: Duration,
    /// Trust domain.
    pub trust_domain: String,
}

impl ControlApi {
    fn host(&self, name: &str) -> Result<Arc<Host>, Status> {
        self.registry.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "no host named \"{name}\"; `fleetctl hosts` lists the hosts this coordinator knows"
            ))
        })
    }

    fn timed<T>(&self, started: Instant, r: T) -> T {
        self.metrics.control_seconds.observe(started.elapsed().as_secs_f64());
        r
    }
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        let t = Instant::now();
        let (online, offline) = self.registry.counts();
        let resp = GetStatusResponse {
            coordinator_version: fleet_common::VERSION.to_string(),
            started_at_ms: self.started_at_ms,
            hosts_online: online as u32,
            hosts_offline: offline as u32,
            sessions: self.sessions.load(Ordering::Relaxed) as u32,
            reports_stored: self.metrics.reports_stored.get(),
            history_reports: self.registry.history_len() as u64,
            history_retention_seconds: self.retention.as_secs(),
            trust_domain: self.trust_domain.clone(),
        };
        Ok(self.timed(t, Response::new(resp)))
    }

    async fn list_hosts(&self, _: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        let t = Instant::now();
        let hosts = self.registry.all().iter().map(|h| h.summary()).collect();
        Ok(self.timed(t, Response::new(ListHostsResponse { hosts })))
    }

    async fn get_host(&self, req: Request<GetHostRequest>) -> Result<Response<GetHostResponse>, Status> {
        let t = Instant::now();
        let host = self.host(&req.get_ref().name)?;
        let (n, oldest) = host.with(|s| (s.history.len(), s.history.iter().map(|h| h.2).min().unwrap_or(0)));
        let resp = GetHostResponse { host: Some(host.summary()), history_reports: n as u64, history_oldest_ms: oldest };
        Ok(self.timed(t, Response::new(resp)))
    }

    async fn list_reports(&self, req: Request<ListReportsRequest>) -> Result<Response<ListReportsResponse>, Status> {
        let t = Instant::now();
        let r = req.get_ref();
        let host = self.host(&r.host)?;
        let limit = if r.limit == 0 { MAX_LIST_REPORTS } else { (r.limit as usize).min(MAX_LIST_REPORTS) };
        let reports = host.reports(r.since_ms, limit);
        Ok(self.timed(t, Response::new(ListReportsResponse { reports })))
    }
}
