//! `mycel server`: the control plane in the foreground.

use crate::cli::ServerArgs;
use crate::connect::data_dir;

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = mycel_control::Config {
        data_dir: data_dir(&args.data)?,
        listen: args.listen,
        max_blob_bytes: args.max_blob_size,
        lost_after: args.lost_after,
    };
    mycel_control::run(config, super::shutdown_signal()).await?;
    Ok(())
}
