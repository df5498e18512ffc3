//! A shutdown signal shared by the threads of a pipeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Cloneable stop flag: set by Ctrl-C/SIGTERM (or a test), read by readers and workers.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
