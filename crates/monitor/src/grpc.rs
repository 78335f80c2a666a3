//! `drover.monitor.v1.Monitor` over gRPC: [`Monitor::health`] and [`Monitor::agents`].

use std::sync::Arc;

use drover_proto::drover::monitor::v1 as pb;
use pb::monitor_server::MonitorServer;
use tonic::{Request, Response, Status};

use crate::service::Monitor;
use crate::tracker::{AgentState, AgentView};

/// The gRPC face of a running replica.
pub struct MonitorGrpc {
    monitor: Arc<Monitor>,
}

impl MonitorGrpc {
    pub fn server(monitor: Arc<Monitor>) -> MonitorServer<Self> {
        MonitorServer::new(Self { monitor })
    }
}

fn state(state: AgentState) -> pb::AgentState {
    match state {
        AgentState::Alive => pb::AgentState::Alive,
        AgentState::Failed { .. } => pb::AgentState::Failed,
    }
}

fn agent(view: AgentView) -> pb::Agent {
    pb::Agent {
        name: view.name,
        state: state(view.state).into(),
        shard: view.shard,
        phi: view.phi,
        silent_ms: u64::try_from(view.silent.as_millis()).unwrap_or(u64::MAX),
        heartbeats: view.heartbeats,
    }
}

#[tonic::async_trait]
impl pb::monitor_server::Monitor for MonitorGrpc {
    async fn get_health(
        &self,
        _request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::Health>, Status> {
        let health = self.monitor.health();
        Ok(Response::new(pb::Health {
            shards: health.shards,
            agents_alive: health.agents_alive,
            agents_failed: health.agents_failed,
            heals_running: health.heals_running,
            heals_queued: health.heals_queued,
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let wanted = pb::AgentState::try_from(request.into_inner().state)
            .map_err(|_| Status::invalid_argument("unknown agent state"))?;
        let agents = self
            .monitor
            .agents()
            .into_iter()
            .map(agent)
            .filter(|a| wanted == pb::AgentState::Unspecified || a.state == i32::from(wanted))
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }
}
