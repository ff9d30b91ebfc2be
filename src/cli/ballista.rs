//! `deltann ballista scheduler|executor`: an Apache Ballista cluster whose executors know
//! deltann's SQL functions, for `deltann query STORE --ballista df://HOST:PORT`.
//!
//! Both are Ballista's own scheduler and executor (the crates of the release that matches the
//! DataFusion in use); the executor is started with the session state deltann plans with, so
//! the functions a saved query calls resolve there too.

use std::io::Write;
use std::process::ExitCode;

use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;

/// A runtime whose threads have room for deep plans: turning a plan into protobuf and back
/// recurses once per node (the saved queries' window functions and self-joins overflowed the
/// default 2 MiB in a debug build).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(deltann_analyzer::ballista::STACK_BYTES)
        .enable_all()
        .build()?)
}

pub fn scheduler() -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let state = deltann_analyzer::ballista::session_state();
        let addr = ballista_scheduler::standalone::new_standalone_scheduler_from_state(&state)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the Ballista scheduler: {e}"))?;
        println!("listening on df://localhost:{}", addr.port());
        std::io::stdout().flush()?;
        std::future::pending::<()>().await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn executor(scheduler: &str, tasks: usize) -> anyhow::Result<ExitCode> {
    let endpoint = format!(
        "http://{}",
        scheduler.strip_prefix("df://").unwrap_or(scheduler)
    );
    let runtime = runtime()?;
    runtime.block_on(async {
        let client = SchedulerGrpcClient::connect(endpoint.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the Ballista scheduler {endpoint}: {e}"))?;
        let state = deltann_analyzer::ballista::session_state();
        ballista_executor::new_standalone_executor_from_state(client, tasks, &state)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the Ballista executor: {e}"))?;
        println!("executor running ({tasks} task slots), scheduler {scheduler}");
        std::io::stdout().flush()?;
        std::future::pending::<()>().await;
        Ok(ExitCode::SUCCESS)
    })
}
