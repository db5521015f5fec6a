//! The backends compiled into this binary, and launching one by routing.

use std::sync::Arc;
use vyre_isa::SlotOp;
use vyre_runtime::{route, Backend, BackendChoice, BackendProvider, Decision};

/// Every backend provider in this build.
pub fn providers() -> Vec<Box<dyn BackendProvider>> {
    #[cfg_attr(
        not(any(feature = "cuda", feature = "wgpu")),
        allow(unused_mut, reason = "a cpu-only build pushes nothing")
    )]
    let mut p: Vec<Box<dyn BackendProvider>> = vec![Box::new(vyre_cpu::CpuProvider)];
    #[cfg(feature = "cuda")]
    p.push(Box::new(vyre_cuda::CudaProvider));
    #[cfg(feature = "wgpu")]
    p.push(Box::new(vyre_wgpu::WgpuProvider));
    p
}

/// Routes `choice` for a workload using `ops` and creates the chosen backend.
pub fn create(
    choice: &str,
    ops: &[SlotOp],
) -> Result<(Arc<dyn Backend>, Decision), Box<dyn std::error::Error>> {
    let choice: BackendChoice = choice.parse()?;
    let providers = providers();
    let refs: Vec<&dyn BackendProvider> = providers.iter().map(|p| p.as_ref()).collect();
    let decision = route(&choice, &refs, ops)?;
    let provider = refs
        .iter()
        .find(|p| p.name() == decision.backend)
        .expect("routing picks a provider");
    Ok((provider.create()?, decision))
}
