//! The `netd.v1.Control` gRPC service: request validation and the mapping
//! of supervisor errors to gRPC status codes, each with a message a person
//! can act on.

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::control::auth::{Caller, caller_of};
use crate::control::watch;
use crate::proto::{self, control_server::Control};
use crate::services::BindError;
use crate::supervisor::{Supervisor, SupervisorError};
use crate::util::page::{self, Page};

#[derive(Debug, Clone)]
pub struct ControlService {
    supervisor: Supervisor,
    /// Ends open streams when the control plane stops.
    stop: CancellationToken,
    /// Where `Reload` asks the daemon's top level to reload (None: netd
    /// was built without one, e.g. in a unit test; Reload is Unavailable).
    reload: Option<ReloadRequests>,
}

/// The answer to one reload: what it did, or why the running config stays.
pub type ReloadOutcome = Result<proto::ReloadResponse, String>;

/// The queue of `Reload` calls to the daemon's top level, which carries
/// each one out on SIGHUP's code path (one at a time) and answers on the
/// oneshot.
pub type ReloadRequests = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadOutcome>>;

impl ControlService {
    pub fn new(supervisor: Supervisor, stop: CancellationToken) -> Self {
        ControlService {
            supervisor,
            stop,
            reload: None,
        }
    }

    /// Serve `Reload` by sending requests to `requests`.
    pub fn with_reload(mut self, requests: ReloadRequests) -> Self {
        self.reload = Some(requests);
        self
    }
}

fn name_filter(name: String) -> Option<String> {
    if name.is_empty() { None } else { Some(name) }
}

/// InvalidArgument for a bad spec or an address this host does not have,
/// AlreadyExists / NotFound for names, FailedPrecondition for a port in use
/// or a privilege the daemon lacks, Unavailable while shutting down.
pub fn to_status(e: SupervisorError) -> Status {
    let msg = e.to_string();
    match e {
        SupervisorError::InvalidSpec(_) => Status::invalid_argument(msg),
        SupervisorError::AlreadyExists(_) => Status::already_exists(msg),
        SupervisorError::NotFound(_) => Status::not_found(msg),
        SupervisorError::Bind(BindError::InUse(_) | BindError::PermissionDenied(_)) => {
            Status::failed_precondition(msg)
        }
        SupervisorError::Bind(BindError::NotAvailable(_)) => Status::invalid_argument(msg),
        SupervisorError::Bind(BindError::Other(..)) => Status::unavailable(msg),
        SupervisorError::Bind(BindError::Precondition(_)) => Status::failed_precondition(msg),
        SupervisorError::ShuttingDown | SupervisorError::HandingOver => Status::unavailable(msg),
        SupervisorError::TooMany(_) => Status::resource_exhausted(msg),
        SupervisorError::Leaving(_) => Status::failed_precondition(msg),
        SupervisorError::Persist(_) => Status::internal(msg),
        SupervisorError::FaultNotFound(..) => Status::not_found(msg),
        SupervisorError::FaultExists(..) => Status::already_exists(msg),
        SupervisorError::NoFaults(..) => Status::failed_precondition(msg),
    }
}

/// The kind a request's spec names, for the audit line ("none" if unset).
fn spec_kind_slug(spec: &Option<proto::ListenerSpec>) -> &'static str {
    spec.as_ref()
        .and_then(|s| s.kind.as_ref())
        .map_or("none", |k| crate::services::info(k).slug)
}

/// One `netd::audit` line per mutating call: who, what, on which listener,
/// and how it ended. The listener name is logged escaped (Debug), so a
/// hostile name cannot forge log lines.
fn audit<T>(caller: &Caller, rpc: &str, name: &str, kind: &str, result: &Result<T, Status>) {
    match result {
        Ok(_) => {
            tracing::info!(target: "netd::audit", caller = %caller.identity, role = caller.role.as_str(), rpc, listener = ?name, kind, "audit: ok")
        }
        Err(s) => {
            tracing::info!(target: "netd::audit", caller = %caller.identity, role = caller.role.as_str(), rpc, listener = ?name, kind, code = ?s.code(), error = s.message(), "audit: refused")
        }
    }
}

impl ControlService {
    /// AddFault (`update` false) and UpdateFault: the fault is required;
    /// one audit line either way.
    async fn put_fault(
        &self,
        caller: &Caller,
        update: bool,
        listener: &str,
        fault: Option<proto::Fault>,
    ) -> Result<Response<proto::FaultStatus>, Status> {
        let (rpc, ty) = (
            if update { "UpdateFault" } else { "AddFault" },
            fault.as_ref().map_or("none", crate::fault::type_of),
        );
        let result = match fault {
            None => Err(Status::invalid_argument("fault is required")),
            Some(f) if update => self
                .supervisor
                .update_fault(listener, f)
                .await
                .map_err(to_status),
            Some(f) => self
                .supervisor
                .add_fault(listener, f)
                .await
                .map_err(to_status),
        };
        audit(caller, rpc, listener, ty, &result);
        Ok(Response::new(result?))
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn add_fault(
        &self,
        request: Request<proto::AddFaultRequest>,
    ) -> Result<Response<proto::FaultStatus>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.put_fault(&caller, false, &req.listener, req.fault)
            .await
    }

    async fn update_fault(
        &self,
        request: Request<proto::UpdateFaultRequest>,
    ) -> Result<Response<proto::FaultStatus>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.put_fault(&caller, true, &req.listener, req.fault)
            .await
    }

    async fn remove_fault(
        &self,
        request: Request<proto::RemoveFaultRequest>,
    ) -> Result<Response<proto::RemoveFaultResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let result = match (req.all, req.name.is_empty()) {
            (true, false) => Err(Status::invalid_argument(
                "give a fault name or `all`, not both",
            )),
            (false, true) => Err(Status::invalid_argument("a fault name is required")),
            (all, _) => self
                .supervisor
                .remove_fault(&req.listener, (!all).then_some(req.name.as_str()))
                .await
                .map_err(to_status),
        };
        audit(&caller, "RemoveFault", &req.listener, "-", &result);
        Ok(Response::new(proto::RemoveFaultResponse {
            removed: result?,
        }))
    }

    async fn list_faults(
        &self,
        request: Request<proto::ListFaultsRequest>,
    ) -> Result<Response<proto::ListFaultsResponse>, Status> {
        let req = request.into_inner();
        let faults = self
            .supervisor
            .list_faults(&req.listener)
            .map_err(to_status)?;
        Ok(Response::new(proto::ListFaultsResponse { faults }))
    }

    async fn start_listener(
        &self,
        request: Request<proto::StartListenerRequest>,
    ) -> Result<Response<proto::StartListenerResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let kind = spec_kind_slug(&req.spec);
        let result = match req.spec {
            None => Err(Status::invalid_argument("spec is required")),
            Some(spec) => self
                .supervisor
                .start(&req.name, spec, req.labels, req.ephemeral)
                .await
                .map_err(to_status),
        };
        audit(&caller, "StartListener", &req.name, kind, &result);
        Ok(Response::new(proto::StartListenerResponse {
            listener: Some(result?),
        }))
    }

    async fn stop_listener(
        &self,
        request: Request<proto::StopListenerRequest>,
    ) -> Result<Response<proto::StopListenerResponse>, Status> {
        let caller = caller_of(&request);
        let name = request.into_inner().name;
        let result = self.supervisor.stop(&name).await.map_err(to_status);
        let kind = result.as_ref().map(|l| l.kind().slug()).unwrap_or("-");
        audit(&caller, "StopListener", &name, kind, &result);
        Ok(Response::new(proto::StopListenerResponse {
            listener: Some(result?),
        }))
    }

    async fn update_listener(
        &self,
        request: Request<proto::UpdateListenerRequest>,
    ) -> Result<Response<proto::UpdateListenerResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let kind = spec_kind_slug(&req.spec);
        let labels = req.set_labels.then_some(req.labels);
        let result = match req.spec {
            None => Err(Status::invalid_argument("spec is required")),
            Some(spec) => self
                .supervisor
                .update(&req.name, spec, labels)
                .await
                .map_err(to_status),
        };
        audit(&caller, "UpdateListener", &req.name, kind, &result);
        let (listener, action, changed) = result?;
        Ok(Response::new(proto::UpdateListenerResponse {
            listener: Some(listener),
            action: action as i32,
            changed: changed.join(", "),
        }))
    }

    async fn drain_listener(
        &self,
        request: Request<proto::DrainListenerRequest>,
    ) -> Result<Response<proto::DrainListenerResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let timeout = crate::services::duration_in(
            "timeout",
            &req.timeout,
            crate::supervisor::DEFAULT_DRAIN_TIMEOUT,
            crate::supervisor::DRAIN_TIMEOUT_RANGE,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()));
        let result = match timeout {
            Err(e) => Err(e),
            Ok(t) => self.supervisor.drain(&req.name, t).await.map_err(to_status),
        };
        let kind = result.as_ref().map(|(l, _)| l.kind().slug()).unwrap_or("-");
        audit(&caller, "DrainListener", &req.name, kind, &result);
        let (listener, closed) = result?;
        Ok(Response::new(proto::DrainListenerResponse {
            listener: Some(listener),
            connections_closed: closed,
        }))
    }

    async fn apply_listeners(
        &self,
        request: Request<proto::ApplyListenersRequest>,
    ) -> Result<Response<proto::ApplyListenersResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let mut entries = Vec::with_capacity(req.listeners.len());
        for e in req.listeners {
            let Some(spec) = e.spec else {
                return Err(Status::invalid_argument(format!(
                    "listener '{}': spec is required",
                    e.name
                )));
            };
            entries.push(crate::state::Desired {
                name: e.name,
                spec,
                labels: e.labels,
            });
        }
        let prune = if req.prune {
            crate::supervisor::Prune::All
        } else {
            crate::supervisor::Prune::None
        };
        let result = self
            .supervisor
            .apply(entries, prune, req.dry_run)
            .await
            .map_err(to_status);
        if !req.dry_run {
            let what = match &result {
                Ok((plan, _)) => format!("{} items", plan.len()),
                Err(_) => "-".into(),
            };
            audit(&caller, "ApplyListeners", &what, "-", &result);
        }
        let (plan, applied) = result?;
        Ok(Response::new(proto::ApplyListenersResponse {
            plan,
            applied,
        }))
    }

    async fn reload(
        &self,
        request: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        let caller = caller_of(&request);
        let result = async {
            let requests = self
                .reload
                .as_ref()
                .ok_or_else(|| Status::unavailable("this netd cannot reload"))?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            requests
                .send(reply)
                .await
                .map_err(|_| Status::unavailable("netd is shutting down; not reloading"))?;
            answer
                .await
                .map_err(|_| {
                    Status::unavailable("netd is shutting down; the reload did not finish")
                })?
                .map_err(Status::failed_precondition)
        }
        .await;
        let what = match &result {
            Ok(r) => r.summary.clone(),
            Err(_) => "-".into(),
        };
        audit(&caller, "Reload", &what, "-", &result);
        Ok(Response::new(result?))
    }

    async fn get_listener(
        &self,
        request: Request<proto::GetListenerRequest>,
    ) -> Result<Response<proto::GetListenerResponse>, Status> {
        let name = request.into_inner().name;
        let listener = self.supervisor.get(&name).map_err(to_status)?;
        Ok(Response::new(proto::GetListenerResponse {
            listener: Some(listener),
        }))
    }

    async fn get_caller(
        &self,
        request: Request<proto::GetCallerRequest>,
    ) -> Result<Response<proto::GetCallerResponse>, Status> {
        // The role the auth layer admitted this call with: not decided again.
        let caller = caller_of(&request);
        Ok(Response::new(proto::GetCallerResponse {
            role: caller.role.as_str().to_string(),
            principal: caller.identity,
        }))
    }

    async fn list_listeners(
        &self,
        request: Request<proto::ListListenersRequest>,
    ) -> Result<Response<proto::ListListenersResponse>, Status> {
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token)?;
        let (listeners, next) = self.supervisor.list_page(&page);
        Ok(Response::new(proto::ListListenersResponse {
            listeners,
            next_page_token: next.map(|n| page::token_after(&n)).unwrap_or_default(),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::StatsSample>, Status> {
        let req = request.into_inner();
        let page = Page::parse(req.page_size, &req.page_token)?;
        let name = name_filter(req.name);
        let sample =
            watch::snapshot(&self.supervisor, name.as_deref(), &page).map_err(to_status)?;
        Ok(Response::new(sample))
    }

    type WatchStatsStream = watch::SampleStream;

    async fn watch_stats(
        &self,
        request: Request<proto::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let req = request.into_inner();
        let interval = watch::interval(req.interval)?;
        let name = name_filter(req.name);
        if let Some(n) = &name {
            self.supervisor.get(n).map_err(to_status)?;
        }
        Ok(Response::new(watch::stats(
            self.supervisor.clone(),
            name,
            interval,
            self.stop.clone(),
        )))
    }

    type WatchEventsStream = watch::EventStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let name = name_filter(request.into_inner().name);
        Ok(Response::new(watch::events(
            &self.supervisor,
            name,
            self.stop.clone(),
        )))
    }

    type WatchPacketsStream = watch::PacketStream;

    async fn watch_packets(
        &self,
        request: Request<proto::WatchPacketsRequest>,
    ) -> Result<Response<Self::WatchPacketsStream>, Status> {
        let name = request.into_inner().name;
        let (rx, counters) = self.supervisor.packets(&name).map_err(to_status)?;
        Ok(Response::new(watch::packets(
            rx,
            counters,
            self.stop.clone(),
        )))
    }
}
