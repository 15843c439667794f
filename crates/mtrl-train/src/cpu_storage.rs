//! Reading and writing the elements of candle's CPU storage, in one place: what the custom
//! ops, the optimiser's in-place kernels and the decoding kernel share.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, WithDType};

/// The contiguous elements of a CPU storage under `layout`.
///
/// # Errors
/// When the layout is strided, or the storage holds another dtype.
pub(crate) fn elements<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(candle_core::Error::RequiresContiguous { op })?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// The contiguous f32 elements of a CPU storage under `layout`, for writing.
///
/// # Errors
/// When the layout is strided, or the storage is not f32.
pub(crate) fn f32_elements_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a mut [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(candle_core::Error::RequiresContiguous { op })?;
    match storage {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("{op}: not f32"),
    }
}

/// Runs `f` on the contiguous f32 elements of CPU tensors; `None` when one is not such a
/// tensor (on another device, strided, or of another dtype).
pub(crate) fn with_f32<R>(tensors: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Option<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(tensors.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            return None;
        };
        slices.push(elements::<f32>(cpu, layout, "with_f32").ok()?);
    }
    Some(f(&slices))
}
