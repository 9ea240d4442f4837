//! The anti-rollback counter over the appliance's TPM: an NV counter per component, with its
//! base in the next NV index (see `warden_attest::tpm::Tpm::svn_floor`).

use warden_firmware_update::SecurityCounter;

use crate::appliance::TpmActor;

#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct CounterError(anyhow::Error);

/// The SVN floor of one component, kept in TPM NV indices `index` (counter) and `index + 1`.
#[derive(Clone)]
pub struct TpmCounter {
    tpm: TpmActor,
    component: String,
    index: u32,
}

impl TpmCounter {
    pub fn new(tpm: TpmActor, component: &str, index: u32) -> Self {
        TpmCounter {
            tpm,
            component: component.to_owned(),
            index,
        }
    }

    fn check(&self, component: &str) -> Result<(u32, u32), CounterError> {
        if component != self.component {
            return Err(CounterError(anyhow::anyhow!(
                "no TPM counter is configured for component {component:?}"
            )));
        }
        Ok((self.index, self.index.wrapping_add(1)))
    }
}

impl SecurityCounter for TpmCounter {
    type Error = CounterError;

    fn floor(&mut self, component: &str) -> Result<u64, CounterError> {
        let (c, b) = self.check(component)?;
        self.tpm
            .run_blocking(move |a| Ok(a.tpm.svn_floor(c, b)?))
            .map_err(CounterError)
    }

    fn raise_to(&mut self, component: &str, svn: u64) -> Result<u64, CounterError> {
        let (c, b) = self.check(component)?;
        self.tpm
            .run_blocking(move |a| Ok(a.tpm.svn_raise(c, b, svn)?))
            .map_err(CounterError)
    }
}
