//! The orchestrator's own commands: `render`, `deploy --image`, `rollback`
//! (the work is in `ops::release`).

use std::sync::Arc;

use super::commands::reporter;
use super::{CliError, RunArgs, StackArgs, EXIT_ERROR, EXIT_OK};
use ralph_core::events::Silent;
use ralph_engine::ops::release::{self, Released};

/// `render`: the manifests, as the next apply would send them.
pub(super) async fn render_cmd(
    args: &StackArgs,
    resource: Option<&str>,
    discover_versions: bool,
) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let cx = s.context(Arc::new(Silent));
    print!(
        "{}",
        release::render_yaml(&s, &cx, resource, discover_versions).await?
    );
    Ok(EXIT_OK)
}

fn finish(json: bool, released: Vec<Released>) -> i32 {
    super::progress::finish();
    let mut failed = false;
    for r in &released {
        match &r.result {
            Ok(()) if !json => eprintln!("{}: rolled out {}", r.address, r.image),
            Ok(()) => {}
            Err(_) => failed = true,
        }
    }
    if json {
        // The stream's last line, as apply's: what was rolled out.
        println!(
            "{}",
            super::render::json_line(serde_json::json!({
                "event": "summary",
                "changes": released.iter().filter(|r| r.result.is_ok()).count(),
                "failed": released.iter().filter(|r| r.result.is_err()).count(),
                "released": released
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::json!({ "address": r.address, "image": r.image });
                        if let Err(e) = &r.result {
                            v["error"] = serde_json::json!(e);
                        }
                        v
                    })
                    .collect::<Vec<_>>(),
            }))
        );
    }
    if failed {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

/// `deploy --image TAG`: the recorded release with a new image.
pub(super) async fn deploy_cmd(
    args: &StackArgs,
    image: &str,
    resource: Option<&str>,
    run: &RunArgs,
) -> Result<i32, CliError> {
    let s = args.session(run.json)?;
    let cx = s.context(reporter(run.json));
    let released = release::deploy(&s, &cx, image, resource).await?;
    Ok(finish(run.json, released))
}

/// `rollback`: the release before the current good one, as recorded.
pub(super) async fn rollback_cmd(
    args: &StackArgs,
    resource: Option<&str>,
    run: &RunArgs,
) -> Result<i32, CliError> {
    let s = args.session(run.json)?;
    let cx = s.context(reporter(run.json));
    let released = release::rollback(&s, &cx, resource).await?;
    Ok(finish(run.json, released))
}
