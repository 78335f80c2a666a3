//! drover's provisioning: allocating and freeing compute through cloud drivers.
//!
//! [`CloudDriver`] is one cloud (the in-memory [`sim`] cloud here; `process` and `nova` come
//! with issue 5); [`Provisioner`] batches, paces and retries requests through a driver and
//! finds orphaned servers. The gRPC service (`drover-provisioner`) will wrap a `Provisioner`.

pub mod driver;
pub mod journal;
pub mod nova;
pub mod provisioner;
pub mod sim;

pub use driver::{
    CloudDriver, CloudError, DriverFuture, Server, ServerSpec, TAG_DEPLOYMENT, TAG_NODE_INSTANCE,
};
pub use journal::{Journal, JournalError};
pub use nova::{NovaAccount, NovaDriver, NovaPolicy, RequestPolicy};
pub use provisioner::{ProvisionError, Provisioner, ProvisionerConfig, Reconciled};
pub use sim::{SimCloud, SimConfig, SimStats};
