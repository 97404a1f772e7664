//! Compiling the kernels with NVRTC to a CUBIN for the device's architecture, cached on disk.

use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::{AttentionError, Result};

/// The kernel source, embedded in the binary: one translation unit of the kernel families, in
/// dependency order (`src/cuda/kernels/`).
pub const SOURCE: &str = concat!(
    include_str!("kernels/common.cuh"),
    include_str!("kernels/prefill_mma.cu"),
    include_str!("kernels/prefill_wgmma.cu"),
    include_str!("kernels/prefill_tma.cu"),
    include_str!("kernels/merge.cu"),
    include_str!("kernels/decode.cu"),
    include_str!("kernels/fill.cu"),
);

/// Whether the NVRTC library can be loaded (checked before any call, since cudarc's dynamic
/// loader panics on a missing library).
pub fn nvrtc_available() -> bool {
    #[cfg(feature = "cuda-linked")]
    return true; // linked into the binary: present, or it would not have started
    // SAFETY: only tries to open the library by its candidate names; calls nothing in it.
    #[cfg(not(feature = "cuda-linked"))]
    unsafe {
        nvrtc_sys::is_culib_present()
    }
}

fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "-std=c++17".into(), "--device-as-default-execution-space".into()]
}

/// Where compiled kernels are cached: `$CP_KERNEL_CACHE`, else `$XDG_CACHE_HOME/cp-rs`, else
/// `$HOME/.cache/cp-rs`, else the system temporary directory.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CP_KERNEL_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("cp-rs");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("cp-rs");
    }
    std::env::temp_dir().join("cp-rs")
}

/// FNV-1a over the source, the options and the NVRTC version: the cache key.
fn key(arch: &str) -> String {
    let mut version = (0, 0);
    // SAFETY: writes two ints; NVRTC presence was checked by the caller.
    unsafe {
        let _ = nvrtc_sys::nvrtcVersion(&mut version.0, &mut version.1);
    }
    let mut h: u64 = 0xcbf29ce484222325;
    let text = format!("{SOURCE}\u{0}{:?}\u{0}{version:?}", options(arch));
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Returns the CUBIN of the kernels for `arch` (e.g. `sm_90`), from the cache or by compiling.
/// A cache that cannot be written is not an error; compilation is.
pub fn cubin(arch: &str) -> Result<Vec<u8>> {
    if !nvrtc_available() {
        return Err(missing_nvrtc());
    }
    let path = cache_dir().join(format!("cp-attention-{arch}-{}.cubin", key(arch)));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(bytes);
    }
    let bytes = compile(arch)?;
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(bytes)
}

/// The error for a machine without NVRTC.
fn missing_nvrtc() -> AttentionError {
    AttentionError::MissingLibrary {
        library: "libnvrtc",
        hint: "install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and put its lib folder on LD_LIBRARY_PATH",
    }
}

/// Compiles the kernels with NVRTC, without the cache. A missing NVRTC is an error.
pub fn compile(arch: &str) -> Result<Vec<u8>> {
    if !nvrtc_available() {
        return Err(missing_nvrtc());
    }
    let fail = |code: String, log: String| AttentionError::Compile { arch: arch.into(), code, log };
    let src = CString::new(SOURCE).map_err(|e| fail(e.to_string(), String::new()))?;
    let name = CString::new("cp_attention.cu").map_err(|e| fail(e.to_string(), String::new()))?;
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}"), String::new()))?;
    let opts = options(arch);
    // SAFETY: `prog` is a live program created above and destroyed once below, after its last
    // use; the option strings outlive the call.
    let out = unsafe {
        match nvrtc::compile_program(prog, &opts) {
            Err(e) => {
                let log = nvrtc::get_program_log(prog)
                    .map(|raw| CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(fail(format!("{e:?}"), log))
            }
            Ok(()) => read_cubin(prog).map_err(|e| fail(format!("{e:?}"), String::new())),
        }
    };
    // SAFETY: destroyed exactly once; nothing uses `prog` afterwards.
    unsafe {
        let _ = nvrtc::destroy_program(prog);
    }
    out
}

/// # Safety
/// `prog` must be a successfully compiled, live NVRTC program.
unsafe fn read_cubin(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, nvrtc::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: per the function contract; the buffer is sized by nvrtcGetCUBINSize.
    unsafe {
        nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
        let mut buf = vec![0u8; size];
        nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char).result()?;
        Ok(buf)
    }
}
