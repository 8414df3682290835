//! containerd's task service as ttrpc's asynchronous server reaches it.
//!
//! containerd opens a connection per task, and ttrpc's synchronous server
//! keeps five or six threads per connection (its handler, reader and
//! workers, one of them parked in Wait for the task's life): about 80 KiB
//! of stack, and the kernel's own stack for each, per idle container of a
//! grouped shim. The asynchronous server keeps none: its connections are
//! tokio tasks. A call runs [`TaskService`] on tokio's blocking pool (a
//! Create clones and mounts, a Delete removes cgroups: none of that may
//! hold up the runtime's one worker), whose threads exist while calls run
//! and a few seconds after; Wait waits on the exit watcher's counter, on
//! no thread at all.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::protos::api;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::TtrpcResult;

use crate::service::{status_error, TaskService};

pub struct AsyncTaskService {
    tasks: Arc<TaskService>,
}

impl AsyncTaskService {
    pub fn new(tasks: TaskService) -> Self {
        Self { tasks: Arc::new(tasks) }
    }

    /// Answer a call with `call` on the blocking pool.
    async fn blocking<T, F>(&self, call: F) -> TtrpcResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&TaskService) -> TtrpcResult<T> + Send + 'static,
    {
        let tasks = self.tasks.clone();
        tokio::task::spawn_blocking(move || call(&tasks))
            .await
            .map_err(|e| status_error(Code::INTERNAL, format!("task service call failed: {e}")))?
    }
}

#[async_trait]
impl Task for AsyncTaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        // A lookup: answered here unless a call holds the state (two thread
        // hops less, in every `ctr run`'s Delete, which asks State first).
        if let Some(answer) = self.tasks.try_state(&req) {
            return answer;
        }
        self.blocking(move |tasks| tasks.state(req)).await
    }

    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        self.blocking(move |tasks| tasks.create(req)).await
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        self.blocking(move |tasks| tasks.start(req)).await
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        self.blocking(move |tasks| tasks.delete(req)).await
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.blocking(move |tasks| tasks.pids(req)).await
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.pause(req)).await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.resume(req)).await
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.kill(req)).await
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.exec(req)).await
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.resize_pty(req)).await
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.close_io(req)).await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.update(req)).await
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        self.tasks.wait(req).await
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        self.blocking(move |tasks| tasks.stats(req)).await
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        self.blocking(move |tasks| tasks.connect(req)).await
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.blocking(move |tasks| tasks.shutdown(req)).await
    }
}
