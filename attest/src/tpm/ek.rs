//! The endorsement key certificate, read from NV.

use tss_esapi::constants::PropertyTag;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::MaxNvBuffer;
use tss_esapi::Context;

use super::{tss, Tpm, TpmError};

/// EK certificate NV indices, in order of preference. TCG EK Credential Profile for TPM Family
/// 2.0, §2.2.1.5 ("EK Credential NV indices"): low range 0x01c00002 (RSA 2048),
/// 0x01c0000a (ECC NIST P-256); high range 0x01c00012 (RSA 2048), 0x01c00014 (ECC P-256),
/// 0x01c00016 (ECC P-384). swtpm 0.7 writes RSA 2048 at 0x01c00002 and, for its ECC EK,
/// a P-384 certificate at 0x01c00016 (not 0x01c0000a).
pub const EK_CERT_INDICES: [u32; 5] = [
    0x01c0_0002,
    0x01c0_000a,
    0x01c0_0012,
    0x01c0_0014,
    0x01c0_0016,
];

/// Larger than any EK certificate seen (≈1–2 KiB); bounds the read.
const MAX_CERT_LEN: usize = 8 * 1024;

const OP: &str = "TPM2_NV_Read(EK certificate)";

impl Tpm {
    /// The EK certificate (DER) from the first populated index of [`EK_CERT_INDICES`], or
    /// `None` if there is none. The bytes are returned as stored (some TPMs pad them); they
    /// are not parsed or checked here.
    pub fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        for index in EK_CERT_INDICES {
            if self.handle_exists(index)? {
                return self.read_nv(index).map(Some);
            }
        }
        Ok(None)
    }

    /// Read a whole NV index with Owner authorization (EK certificate indices are ownerRead),
    /// in chunks of at most TPM_PT_NV_BUFFER_MAX bytes.
    fn read_nv(&mut self, index: u32) -> Result<Vec<u8>, TpmError> {
        let tpm_handle = NvIndexTpmHandle::new(index).map_err(tss(OP))?;
        let mut object = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
            .map_err(tss("Esys_TR_FromTPMPublic(NV index)"))?;
        let result = read_nv_handle(&mut self.ctx, NvIndexHandle::from(object));
        let closed = self.ctx.tr_close(&mut object).map_err(tss("Esys_TR_Close"));
        let data = result?;
        closed?;
        Ok(data)
    }
}

fn read_nv_handle(ctx: &mut Context, nv: NvIndexHandle) -> Result<Vec<u8>, TpmError> {
    let (public, _name) = ctx
        .execute_without_session(|ctx| ctx.nv_read_public(nv))
        .map_err(tss("TPM2_NV_ReadPublic"))?;
    let size = public.data_size();
    if size > MAX_CERT_LEN {
        return Err(TpmError::Unexpected {
            op: OP,
            reason: format!("NV index holds {size} bytes, more than {MAX_CERT_LEN}"),
        });
    }
    let chunk = ctx
        .get_tpm_property(PropertyTag::NvBufferMax)
        .map_err(tss("TPM2_GetCapability(TPM_PT_NV_BUFFER_MAX)"))?
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(512)
        .clamp(1, MaxNvBuffer::MAX_SIZE);
    let mut data = Vec::with_capacity(size);
    // Each round reads at least one byte, so this ends after at most `size` rounds.
    while data.len() < size {
        let want = chunk.min(size - data.len());
        let (want16, offset16) = match (u16::try_from(want), u16::try_from(data.len())) {
            (Ok(w), Ok(o)) => (w, o),
            _ => {
                return Err(TpmError::Unexpected {
                    op: OP,
                    reason: "NV offset does not fit 16 bits".into(),
                })
            }
        };
        let got = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_read(NvAuth::Owner, nv, want16, offset16)
            })
            .map_err(tss(OP))?;
        if got.is_empty() || got.len() > want {
            return Err(TpmError::Unexpected {
                op: OP,
                reason: format!(
                    "asked for {want} bytes at offset {}, got {}",
                    data.len(),
                    got.len()
                ),
            });
        }
        data.extend_from_slice(got.value());
    }
    Ok(data)
}
