//! drover's provisioning: allocating and freeing compute through cloud drivers.
//!
//! [`CloudDriver`] is one cloud: [`nova`] (OpenStack over HTTP), [`process`] (local agent
//! processes) and [`sim`] (in memory). [`Provisioner`] batches, paces and retries requests
//! through a driver and finds orphaned servers; [`service`] serves it over gRPC
//! (`drover-provisioner`) and [`RemoteCloud`] is the driver that calls that service.

pub mod driver;
pub mod journal;
pub mod metrics;
pub mod nova;
pub mod process;
pub mod provisioner;
pub mod service;
pub mod sim;
pub mod testing;

pub use driver::{
    CloudDriver, CloudError, DriverFuture, Server, ServerKey, ServerSpec, TAG_DEPLOYMENT,
    TAG_NODE_INSTANCE,
};
pub use journal::{Journal, JournalError};
pub use metrics::Metrics;
pub use nova::{NovaAccount, NovaDriver, NovaPolicy, RequestPolicy};
pub use process::ProcessCloud;
pub use provisioner::{ProvisionError, Provisioner, ProvisionerConfig, Reconciled};
pub use service::{ProvisioningServer, ProvisioningService, RemoteCloud};
pub use sim::{SimCloud, SimConfig, SimStats};
