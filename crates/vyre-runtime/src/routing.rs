//! Routing: which backend runs a workload. Every decision is named and logged with its
//! reason (`vyre info` prints it).

use crate::backend::{BackendKind, BackendProvider};
use std::fmt;
use vyre_isa::SlotOp;

/// Backend names vyre knows, whether or not this build contains them.
pub const KNOWN_BACKENDS: &[&str] = &["cpu", "cuda", "wgpu"];

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The best available backend that supports the workload (GPU before CPU).
    Auto,
    /// Exactly this backend.
    Named(String),
}

impl std::str::FromStr for BackendChoice {
    type Err = RoutingError;
    fn from_str(s: &str) -> Result<BackendChoice, RoutingError> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            s if KNOWN_BACKENDS.contains(&s) => Ok(BackendChoice::Named(s.to_string())),
            s => Err(RoutingError::Unknown {
                name: s.to_string(),
            }),
        }
    }
}

/// What routing concluded about one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The backend.
    pub name: String,
    /// Whether it could run the workload.
    pub usable: bool,
    /// Why or why not.
    pub why: String,
}

/// The routing decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The chosen backend.
    pub backend: String,
    /// The rule that chose it (`auto: first usable GPU`, `requested`, ...).
    pub strategy: &'static str,
    /// Why it was chosen.
    pub reason: String,
    /// Every backend considered, in order.
    pub considered: Vec<Verdict>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backend {} ({}): {}",
            self.backend, self.strategy, self.reason
        )
    }
}

/// Routing failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Not a backend name at all.
    #[error("unknown backend `{name}`; choose one of auto, {}", KNOWN_BACKENDS.join(", "))]
    Unknown {
        /// What was asked for.
        name: String,
    },
    /// The requested backend cannot be used.
    #[error("backend `{name}` is not available: {why}; available: {available}")]
    NotAvailable {
        /// What was asked for.
        name: String,
        /// Why not.
        why: String,
        /// The backends that are.
        available: String,
    },
    /// Nothing can run the workload.
    #[error(
        "no backend supports every opcode the workload uses ({ops}); considered: {considered}"
    )]
    NoBackend {
        /// The opcodes needed.
        ops: String,
        /// What each backend said.
        considered: String,
    },
}

fn verdict(p: &dyn BackendProvider, required: &[SlotOp]) -> (Verdict, BackendKind) {
    let name = p.name().into();
    let mut kind = p.kind();
    let v = match p.probe() {
        Err(crate::BackendError::Unavailable { reason, hint, .. }) => Verdict {
            name,
            usable: false,
            why: format!("{reason}; {hint}"),
        },
        Err(e) => Verdict {
            name,
            usable: false,
            why: e.to_string(),
        },
        Ok(caps) => {
            kind = caps.kind;
            let missing: Vec<_> = required
                .iter()
                .filter(|op| !caps.ops.contains(op))
                .map(|op| op.mnemonic())
                .collect();
            if missing.is_empty() {
                Verdict {
                    name,
                    usable: true,
                    why: format!(
                        "available ({}), supports every required opcode",
                        caps.device
                    ),
                }
            } else {
                Verdict {
                    name,
                    usable: false,
                    why: format!("does not support {}", missing.join(", ")),
                }
            }
        }
    };
    (v, kind)
}

/// Picks a backend for a workload that uses `required` opcodes.
pub fn route(
    choice: &BackendChoice,
    providers: &[&dyn BackendProvider],
    required: &[SlotOp],
) -> Result<Decision, RoutingError> {
    let BackendChoice::Named(name) = choice else {
        return route_auto(providers, required);
    };
    // A named backend that can run the workload is chosen without probing the others: a
    // probe can cost a device open or a wgpu adapter with its start-up canary, which a
    // `--backend cpu` scan of one file should not pay. The others are probed only to say
    // what is available when the named one is not.
    let why = match providers.iter().find(|p| p.name() == name) {
        Some(p) => {
            let (v, _) = verdict(*p, required);
            if v.usable {
                return Ok(logged(Decision {
                    backend: name.clone(),
                    strategy: "requested",
                    reason: v.why.clone(),
                    considered: vec![v],
                }));
            }
            v.why
        }
        None => "not compiled into this build".into(),
    };
    let others: Vec<&dyn BackendProvider> = providers
        .iter()
        .copied()
        .filter(|p| p.name() != name)
        .collect();
    let names: Vec<String> = ranked(&others, required)
        .into_iter()
        .filter(|(v, _)| v.usable)
        .map(|(v, _)| v.name)
        .collect();
    Err(RoutingError::NotAvailable {
        name: name.clone(),
        why,
        available: if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        },
    })
}

/// Every provider's verdict, GPU before CPU by what the probe found: a wgpu adapter that is
/// a software rasterizer (lavapipe) reports itself as a CPU device, and is emulation, so it
/// comes after the native cpu backend. Stable otherwise.
fn ranked(providers: &[&dyn BackendProvider], required: &[SlotOp]) -> Vec<(Verdict, BackendKind)> {
    let mut ranked: Vec<(Verdict, BackendKind, bool)> = providers
        .iter()
        .map(|p| {
            let (v, kind) = verdict(*p, required);
            let emulated = p.kind() == BackendKind::Gpu && kind == BackendKind::Cpu;
            (v, kind, emulated)
        })
        .collect();
    ranked.sort_by_key(|&(_, kind, emulated)| (kind, emulated));
    ranked.into_iter().map(|(v, kind, _)| (v, kind)).collect()
}

/// `auto`: the first usable backend in [`ranked`] order.
fn route_auto(
    providers: &[&dyn BackendProvider],
    required: &[SlotOp],
) -> Result<Decision, RoutingError> {
    let verdicts = ranked(providers, required);
    let absent = KNOWN_BACKENDS
        .iter()
        .filter(|name| !providers.iter().any(|p| p.name() == **name))
        .map(|name| Verdict {
            name: (*name).into(),
            usable: false,
            why: "not compiled into this build".into(),
        });
    let Some((v, kind)) = verdicts.iter().find(|(v, _)| v.usable) else {
        let ops: Vec<_> = required.iter().map(|o| o.mnemonic()).collect();
        let all: Vec<_> = verdicts
            .iter()
            .map(|(v, _)| v.clone())
            .chain(absent)
            .map(|v| format!("{}: {}", v.name, v.why))
            .collect();
        return Err(RoutingError::NoBackend {
            ops: ops.join(", "),
            considered: all.join("; "),
        });
    };
    let strategy = if *kind == BackendKind::Gpu {
        "auto: first usable GPU"
    } else {
        "auto: CPU fallback (no usable GPU)"
    };
    let (backend, reason) = (v.name.clone(), v.why.clone());
    Ok(logged(Decision {
        backend,
        strategy,
        reason,
        considered: verdicts.into_iter().map(|(v, _)| v).chain(absent).collect(),
    }))
}

fn logged(decision: Decision) -> Decision {
    tracing::info!(backend = %decision.backend, strategy = decision.strategy, reason = %decision.reason, "routing decision");
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, BackendError, Capabilities, ExecutionModel};
    use std::sync::Arc;

    struct Fake {
        name: &'static str,
        kind: BackendKind,
        ops: Option<Vec<SlotOp>>,
        /// What the probe reports, when it differs from `kind` (a software GPU).
        probed: Option<BackendKind>,
    }

    impl BackendProvider for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn kind(&self) -> BackendKind {
            self.kind
        }
        fn probe(&self) -> Result<Capabilities, BackendError> {
            match &self.ops {
                None => Err(BackendError::Unavailable {
                    backend: self.name,
                    reason: "no driver".into(),
                    hint: "install one".into(),
                }),
                Some(ops) => Ok(Capabilities {
                    device: "fake".into(),
                    kind: self.probed.unwrap_or(self.kind),
                    model: ExecutionModel::Persistent,
                    ops: ops.clone(),
                    default_workers: 1,
                    max_workers: 1,
                    max_buffer_bytes: 1,
                    max_buffers: 1,
                    max_programs: 1,
                }),
            }
        }
        fn create(&self) -> Result<Arc<dyn Backend>, BackendError> {
            unreachable!("routing never creates")
        }
    }

    fn cpu() -> Fake {
        Fake {
            name: "cpu",
            kind: BackendKind::Cpu,
            ops: Some(SlotOp::ALL.to_vec()),
            probed: None,
        }
    }

    #[test]
    fn auto_prefers_a_gpu_that_supports_every_op() {
        let gpu = Fake {
            name: "cuda",
            kind: BackendKind::Gpu,
            ops: Some(SlotOp::ALL.to_vec()),
            probed: None,
        };
        let (c, g) = (cpu(), gpu);
        let d = route(&BackendChoice::Auto, &[&c, &g], &[SlotOp::Hash64]).unwrap();
        assert_eq!(
            (d.backend.as_str(), d.strategy),
            ("cuda", "auto: first usable GPU")
        );
        assert!(d
            .considered
            .iter()
            .any(|v| v.name == "wgpu" && v.why == "not compiled into this build"));
    }

    #[test]
    fn auto_prefers_the_cpu_backend_to_a_software_gpu() {
        // lavapipe: a wgpu adapter that is a CPU device; the native cpu backend is faster.
        let lavapipe = Fake {
            name: "wgpu",
            kind: BackendKind::Gpu,
            ops: Some(SlotOp::ALL.to_vec()),
            probed: Some(BackendKind::Cpu),
        };
        let (c, g) = (cpu(), lavapipe);
        let d = route(&BackendChoice::Auto, &[&g, &c], &[SlotOp::DfaScan]).unwrap();
        assert_eq!(d.backend, "cpu");
        let d = route(&BackendChoice::Named("wgpu".into()), &[&c, &g], &[]).unwrap();
        assert_eq!(d.backend, "wgpu");
    }

    #[test]
    fn auto_falls_back_to_cpu_when_the_gpu_lacks_an_op_and_says_why() {
        let gpu = Fake {
            name: "wgpu",
            kind: BackendKind::Gpu,
            ops: Some(vec![SlotOp::Nop]),
            probed: None,
        };
        let (c, g) = (cpu(), gpu);
        let d = route(
            &BackendChoice::Auto,
            &[&g, &c],
            &[SlotOp::Nop, SlotOp::Exec],
        )
        .unwrap();
        assert_eq!(d.backend, "cpu");
        assert_eq!(d.strategy, "auto: CPU fallback (no usable GPU)");
        let w = d.considered.iter().find(|v| v.name == "wgpu").unwrap();
        assert!(
            !w.usable && w.why.contains("does not support EXEC"),
            "{w:?}"
        );
    }

    /// A provider that counts its probes.
    struct Counted(Fake, std::sync::atomic::AtomicUsize);

    impl BackendProvider for Counted {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn kind(&self) -> BackendKind {
            self.0.kind()
        }
        fn probe(&self) -> Result<Capabilities, BackendError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.probe()
        }
        fn create(&self) -> Result<Arc<dyn Backend>, BackendError> {
            self.0.create()
        }
    }

    #[test]
    fn a_named_usable_backend_is_chosen_without_probing_the_others() {
        let gpu = || {
            Counted(
                Fake {
                    name: "wgpu",
                    kind: BackendKind::Gpu,
                    ops: Some(SlotOp::ALL.to_vec()),
                    probed: None,
                },
                Default::default(),
            )
        };
        let (c, g) = (cpu(), gpu());
        let d = route(&BackendChoice::Named("cpu".into()), &[&g, &c], &[]).unwrap();
        assert_eq!((d.backend.as_str(), d.strategy), ("cpu", "requested"));
        assert_eq!(g.1.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(d.considered.len(), 1);
        // Auto probes everything.
        let g = gpu();
        route(&BackendChoice::Auto, &[&g, &c], &[]).unwrap();
        assert_eq!(g.1.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn asking_for_an_unavailable_backend_lists_what_is_available() {
        let gpu = Fake {
            name: "cuda",
            kind: BackendKind::Gpu,
            ops: None,
            probed: None,
        };
        let (c, g) = (cpu(), gpu);
        let e = route(&BackendChoice::Named("cuda".into()), &[&c, &g], &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("backend `cuda` is not available")
                && msg.contains("no driver")
                && msg.contains("available: cpu"),
            "{msg}"
        );
        let e = route(&BackendChoice::Named("wgpu".into()), &[&c], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("not compiled into this build; available: cpu"),
            "{e}"
        );
        assert!("metal"
            .parse::<BackendChoice>()
            .unwrap_err()
            .to_string()
            .contains("choose one of auto, cpu, cuda, wgpu"));
    }

    #[test]
    fn no_backend_for_the_workload_is_an_error_naming_the_ops() {
        let c = Fake {
            name: "cpu",
            kind: BackendKind::Cpu,
            ops: Some(vec![SlotOp::Nop]),
            probed: None,
        };
        let e = route(&BackendChoice::Auto, &[&c], &[SlotOp::Exec]).unwrap_err();
        assert!(
            e.to_string()
                .contains("no backend supports every opcode the workload uses (EXEC)"),
            "{e}"
        );
    }
}
