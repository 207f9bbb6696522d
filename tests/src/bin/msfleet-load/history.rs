use super::*;
pub async fn history(_args: &Args, _bin: &PathBuf) -> Result<()> {
    bail!("todo")
}
